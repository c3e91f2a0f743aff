//! A minimal blocking wire-protocol client for tests that need exact control over messages
//! (Flush without Sync, not reading a result, ...).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

pub struct RawClient {
    pub s: TcpStream,
    buf: Vec<u8>,
    /// BackendKeyData the proxy gave this client: (pid, secret).
    pub key: (i32, [u8; 4]),
}

fn frame(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut v = vec![tag];
    v.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
    v.extend_from_slice(body);
    v
}

fn cstr(s: &str) -> Vec<u8> {
    let mut v = s.as_bytes().to_vec();
    v.push(0);
    v
}

impl RawClient {
    /// Connects and logs in with trust; returns after the first ReadyForQuery.
    pub fn login(addr: SocketAddr, user: &str, db: &str) -> RawClient {
        let s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut c = RawClient { s, buf: Vec::new(), key: (0, [0; 4]) };
        let mut body = vec![0, 3, 0, 0];
        for (k, v) in [("user", user), ("database", db)] {
            body.extend(cstr(k));
            body.extend(cstr(v));
        }
        body.push(0);
        let mut pkt = ((body.len() + 4) as u32).to_be_bytes().to_vec();
        pkt.extend(body);
        c.s.write_all(&pkt).unwrap();
        loop {
            let (t, body) = c.read();
            match t {
                b'K' => c.key = (i32::from_be_bytes(body[..4].try_into().unwrap()), body[4..8].try_into().unwrap()),
                b'E' => panic!("login failed: {}", String::from_utf8_lossy(&body)),
                b'Z' => return c,
                _ => {}
            }
        }
    }

    pub fn send(&mut self, tag: u8, body: &[u8]) {
        self.s.write_all(&frame(tag, body)).unwrap();
    }

    pub fn query(&mut self, sql: &str) {
        self.send(b'Q', &cstr(sql));
    }

    pub fn parse(&mut self, name: &str, sql: &str) {
        let mut b = cstr(name);
        b.extend(cstr(sql));
        b.extend_from_slice(&0u16.to_be_bytes());
        self.send(b'P', &b);
    }

    pub fn describe_statement(&mut self, name: &str) {
        let mut b = vec![b'S'];
        b.extend(cstr(name));
        self.send(b'D', &b);
    }

    pub fn bind(&mut self, portal: &str, stmt: &str) {
        let mut b = cstr(portal);
        b.extend(cstr(stmt));
        b.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
        self.send(b'B', &b);
    }

    /// A Bind with text parameters.
    pub fn bind_text(&mut self, portal: &str, stmt: &str, params: &[&str]) {
        let mut b = cstr(portal);
        b.extend(cstr(stmt));
        b.extend_from_slice(&0u16.to_be_bytes());
        b.extend_from_slice(&(params.len() as u16).to_be_bytes());
        for p in params {
            b.extend_from_slice(&(p.len() as i32).to_be_bytes());
            b.extend_from_slice(p.as_bytes());
        }
        b.extend_from_slice(&0u16.to_be_bytes());
        self.send(b'B', &b);
    }

    pub fn execute(&mut self, portal: &str) {
        let mut b = cstr(portal);
        b.extend_from_slice(&0u32.to_be_bytes());
        self.send(b'E', &b);
    }

    /// Reads one message: (tag, body).
    pub fn read(&mut self) -> (u8, Vec<u8>) {
        loop {
            if self.buf.len() >= 5 {
                let len = u32::from_be_bytes([self.buf[1], self.buf[2], self.buf[3], self.buf[4]]) as usize;
                if self.buf.len() > len {
                    let msg: Vec<u8> = self.buf.drain(..len + 1).collect();
                    return (msg[0], msg[5..].to_vec());
                }
            }
            let mut chunk = [0u8; 65536];
            let n = self.s.read(&mut chunk).expect("read from proxy");
            assert!(n > 0, "proxy closed the connection");
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// Reads messages up to and including one with `tag`; returns the tags seen.
    pub fn until(&mut self, tag: u8) -> Vec<u8> {
        let mut seen = Vec::new();
        loop {
            let (t, body) = self.read();
            seen.push(t);
            if t == b'E' && tag != b'E' {
                panic!("error from proxy: {}", String::from_utf8_lossy(&body));
            }
            if t == tag {
                return seen;
            }
        }
    }
}

/// Runs `sql` on a new connection and reads its answer 64 KiB at a time with `pause` after each
/// read, to the final ReadyForQuery; returns the bytes read.
pub fn read_slowly(addr: SocketAddr, sql: &str, pause: Duration) -> u64 {
    let mut c = RawClient::login(addr, "app", "postgres");
    c.query(sql);
    let (mut buf, mut tail, mut total) = (vec![0u8; 64 * 1024], Vec::new(), 0u64);
    loop {
        let n = c.s.read(&mut buf).expect("read from proxy");
        assert!(n > 0, "the proxy closed the connection");
        total += n as u64;
        tail.extend_from_slice(&buf[..n]);
        tail.drain(..tail.len().saturating_sub(16));
        if tail.ends_with(&[b'Z', 0, 0, 0, 5, b'I']) {
            return total;
        }
        std::thread::sleep(pause);
    }
}
