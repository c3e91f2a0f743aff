//! The admin console: the virtual database `pgweir`, open to `proxy.admin_users` only, answering
//! simple-protocol commands from psql or a pgbouncer exporter. SHOW commands use PgBouncer's
//! column names and types where the concept is the same: SHOW HELP, VERSION, CONFIG, DATABASES,
//! POOLS, CLIENTS, SERVERS, STATS, and PgWeir's own SHOW REPLICAS, CACHE, PINS and QUERIES;
//! PAUSE [db] and RESUME [db] hold new transactions back; KILL id (SHOW CLIENTS' id) or KILL db
//! closes clients; RELOAD and SHUTDOWN act as SIGHUP and SIGTERM.

use tokio::io::AsyncReadExt;

use super::{ClientConn, Context};
use crate::wire::backend::{put_backend_key_data, put_parameter_status, put_ready_for_query};
use crate::wire::frame::{put_frame, FrameHead};
use crate::wire::{tag, PgError, SqlState};

/// The console's database name.
pub const ADMIN_DB: &str = "pgweir";

mod activity;
mod show;
mod table;

use show::*;
use table::{Table, TEXT};

fn error(m: impl Into<String>) -> PgError {
    PgError::error(SqlState("42601"), m.into()).with_hint("SHOW HELP lists the commands")
}

/// Serves one admin connection (already authenticated as `user`) to the end.
pub(super) async fn serve(ctx: &Context, mut client: ClientConn, user: String) {
    if !ctx.live_config().admin_users.contains(&user) {
        let e = PgError::fatal(SqlState("42501"), format!("pgweir: user \"{user}\" may not use the admin console"))
            .with_hint("list it in proxy.admin_users");
        return client.fatal(e).await;
    }
    for (k, v) in [
        ("server_version", "15.0 (PgWeir)"),
        ("server_encoding", "UTF8"),
        ("client_encoding", "UTF8"),
        ("DateStyle", "ISO, MDY"),
        ("integer_datetimes", "on"),
        ("standard_conforming_strings", "on"),
        ("application_name", ""),
    ] {
        put_parameter_status(&mut client.wbuf, k, v);
    }
    put_backend_key_data(&mut client.wbuf, 0, 0);
    put_ready_for_query(&mut client.wbuf, b'I');
    if client.flush().await.is_err() {
        return;
    }
    loop {
        let h = match FrameHead::parse(&client.rbuf, 1 << 20) {
            Ok(Some(h)) if client.rbuf.len() >= h.total => h,
            Ok(_) => match client.stream.read_buf(&mut client.rbuf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => continue,
            },
            Err(e) => return client.fatal(PgError::fatal(SqlState::PROTOCOL_VIOLATION, e.to_string())).await,
        };
        let frame = client.rbuf.split_to(h.total);
        match h.tag {
            tag::TERMINATE => return,
            tag::QUERY => {
                let body = &frame[5..];
                let text = String::from_utf8_lossy(body.strip_suffix(&[0]).unwrap_or(body)).into_owned();
                match command(ctx, &text) {
                    Ok(Some((t, tag_text))) => t.encode(&mut client.wbuf, &tag_text),
                    Ok(None) => put_frame(&mut client.wbuf, b'I', &[]),
                    Err(e) => e.encode(&mut client.wbuf),
                }
                put_ready_for_query(&mut client.wbuf, b'I');
            }
            tag::SYNC => {
                error("the admin console speaks the simple query protocol only").encode(&mut client.wbuf);
                put_ready_for_query(&mut client.wbuf, b'I');
            }
            _ => {}
        }
        if client.flush().await.is_err() {
            return;
        }
    }
}

/// One command's result (None: an empty query).
fn command(ctx: &Context, text: &str) -> Result<Option<(Table, String)>, PgError> {
    let words: Vec<String> =
        text.trim().trim_end_matches(';').split_whitespace().map(|w| w.to_ascii_uppercase()).collect();
    let words: Vec<&str> = words.iter().map(String::as_str).collect();
    let show = |t: Table| Ok(Some((t, "SHOW".to_string())));
    match words.as_slice() {
        [] => Ok(None),
        ["SHOW", "HELP"] => {
            let mut t = Table::new(&[("command", TEXT)]);
            for c in [
                "SHOW HELP",
                "SHOW VERSION",
                "SHOW CONFIG",
                "SHOW DATABASES",
                "SHOW POOLS",
                "SHOW CLIENTS",
                "SHOW SERVERS",
                "SHOW QUERIES",
                "SHOW STATS",
                "SHOW CACHE",
                "SHOW PINS",
                "SHOW REPLICAS",
                "RELOAD",
                "SHUTDOWN",
                "PAUSE [db]",
                "RESUME [db]",
                "KILL id|db",
            ] {
                t.row(vec![c.to_string()]);
            }
            show(t)
        }
        ["SHOW", "VERSION"] => {
            let mut t = Table::new(&[("version", TEXT)]);
            t.row(vec![format!("PgWeir {}", env!("CARGO_PKG_VERSION"))]);
            show(t)
        }
        ["SHOW", "CONFIG"] => show(config(ctx)),
        ["SHOW", "DATABASES"] => show(databases(ctx)),
        ["SHOW", "POOLS"] => show(pools(ctx)),
        ["SHOW", "REPLICAS"] => show(replicas(ctx)),
        ["SHOW", "CLIENTS"] => show(clients(ctx)),
        ["SHOW", "SERVERS"] => show(activity::servers(ctx)),
        ["SHOW", "QUERIES"] => show(activity::queries(ctx)),
        ["SHOW", "STATS"] => show(stats(ctx)),
        ["SHOW", "CACHE"] => show(cache(ctx)),
        ["SHOW", "PINS"] => show(pins(ctx)),
        ["SHUTDOWN"] => {
            // Drains as on SIGTERM (a stored permit: the signal loop may not be waiting yet).
            ctx.control.shutdown.notify_one();
            Ok(Some((Table::new(&[]), "SHUTDOWN".to_string())))
        }
        ["RELOAD"] => match super::reload::reload(ctx) {
            Ok(_) => Ok(Some((Table::new(&[]), "RELOAD".to_string()))),
            Err(e) => Err(PgError::error(SqlState("F0000"), format!("pgweir: reload failed, nothing changed: {e}"))),
        },
        ["PAUSE"] | ["PAUSE", _] | ["RESUME"] | ["RESUME", _] | ["KILL", _] => {
            // Database names keep their case: take them from the text.
            let arg =
                text.trim().trim_end_matches(';').split_whitespace().nth(1).map(|a| a.trim_matches('"').to_string());
            let verb = words[0];
            Ok(Some((Table::new(&[]), control(ctx, verb, arg.as_deref())?)))
        }
        _ => Err(error(format!("pgweir admin: unknown command \"{}\"", text.trim()))),
    }
}

/// PAUSE, RESUME and KILL: the CommandComplete tag.
fn control(ctx: &Context, verb: &str, arg: Option<&str>) -> Result<String, PgError> {
    match verb {
        "PAUSE" => {
            ctx.control.pause(arg);
            Ok("PAUSE".into())
        }
        "RESUME" => {
            ctx.control.resume(arg);
            Ok("RESUME".into())
        }
        _ => {
            let Some(arg) = arg else { return Err(error("KILL needs a client id (SHOW CLIENTS) or a database")) };
            let by_id = arg.parse::<i32>().ok();
            let mut killed = 0;
            for (id, slot) in ctx.cancels.clients() {
                let info = slot.info.lock().unwrap_or_else(|p| p.into_inner());
                let Some(info) = info.as_ref() else { continue };
                let hit = match by_id {
                    Some(want) => id == want,
                    None => info.database == arg,
                };
                if hit {
                    slot.kill();
                    killed += 1;
                }
            }
            if killed == 0 {
                return Err(PgError::error(SqlState("42704"), format!("pgweir admin: no client matches \"{arg}\"")));
            }
            Ok("KILL".into())
        }
    }
}
