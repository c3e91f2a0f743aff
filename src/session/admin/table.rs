//! The console's result sets: columns with type OIDs and rows of text values, encoded as
//! RowDescription, DataRows and CommandComplete.

use crate::wire::frame::put_frame;
use crate::wire::tag;

pub(super) const TEXT: u32 = 25;
pub(super) const INT8: u32 = 20;

/// The columns PgBouncer's SHOW CLIENTS and SHOW SERVERS share (one row per socket).
pub(super) const SOCKET_COLUMNS: [(&str, u32); 18] = [
    ("type", TEXT),
    ("user", TEXT),
    ("database", TEXT),
    ("state", TEXT),
    ("addr", TEXT),
    ("port", INT8),
    ("local_addr", TEXT),
    ("local_port", INT8),
    ("connect_time", TEXT),
    ("request_time", TEXT),
    ("wait", INT8),
    ("wait_us", INT8),
    ("close_needed", INT8),
    ("ptr", TEXT),
    ("link", TEXT),
    ("remote_pid", INT8),
    ("tls", TEXT),
    ("application_name", TEXT),
];

/// A result: columns (name, type OID) and rows of text values.
pub(super) struct Table {
    pub(super) cols: Vec<(&'static str, u32)>,
    pub(super) rows: Vec<Vec<Option<String>>>,
}

impl Table {
    pub(super) fn new(cols: &[(&'static str, u32)]) -> Table {
        Table { cols: cols.to_vec(), rows: Vec::new() }
    }

    pub(super) fn row(&mut self, values: Vec<String>) {
        self.rows.push(values.into_iter().map(Some).collect());
    }

    pub(super) fn encode(&self, out: &mut bytes::BytesMut, tag_text: &str) {
        if self.cols.is_empty() {
            put_frame(out, b'C', format!("{tag_text}\0").as_bytes());
            return;
        }
        let mut d = Vec::new();
        d.extend_from_slice(&(self.cols.len() as i16).to_be_bytes());
        for (name, oid) in &self.cols {
            d.extend_from_slice(name.as_bytes());
            d.push(0);
            d.extend_from_slice(&0i32.to_be_bytes());
            d.extend_from_slice(&0i16.to_be_bytes());
            d.extend_from_slice(&oid.to_be_bytes());
            d.extend_from_slice(&(if matches!(*oid, INT8 | 701) { 8i16 } else { -1i16 }).to_be_bytes());
            d.extend_from_slice(&(-1i32).to_be_bytes());
            d.extend_from_slice(&0i16.to_be_bytes());
        }
        put_frame(out, b'T', &d);
        for r in &self.rows {
            let mut b = Vec::new();
            b.extend_from_slice(&(r.len() as i16).to_be_bytes());
            for v in r {
                match v {
                    Some(v) => {
                        b.extend_from_slice(&(v.len() as i32).to_be_bytes());
                        b.extend_from_slice(v.as_bytes());
                    }
                    None => b.extend_from_slice(&(-1i32).to_be_bytes()),
                }
            }
            put_frame(out, tag::DATA_ROW, &b);
        }
        put_frame(out, b'C', format!("{tag_text}\0").as_bytes());
    }
}
