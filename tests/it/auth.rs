//! Client authentication through the proxy, and the credentials it uses towards the server.

use crate::harness::pg::{PgCluster, PgOptions};
use crate::support::{message, scalar, sqlstate, start_proxy, try_connect};

async fn expect_28p01(addr: std::net::SocketAddr, user: &str, password: &str) {
    let err = try_connect(addr, user, Some(password), "postgres").await.expect_err("login must fail");
    assert_eq!(sqlstate(&err), "28P01", "{err}");
    assert!(
        message(&err).contains(&format!("password authentication failed for user \"{user}\"")),
        "unexpected message: {err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scram_users_from_config() {
    let pg = PgCluster::start(PgOptions::default());
    let proxy = start_proxy(&pg, "[[users]]\nname = \"scram_user\"\npassword = \"scram_pass\"\n").await;
    let addr = proxy.local_addr();
    let c = try_connect(addr, "scram_user", Some("scram_pass"), "postgres").await.expect("right password");
    assert_eq!(scalar(&c, "select current_user").await.unwrap(), "scram_user");
    expect_28p01(addr, "scram_user", "wrong").await;
    // An unknown user gets the same answer, after the same exchange.
    expect_28p01(addr, "nobody_here", "whatever").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn md5_users_from_config_and_md5_to_server() {
    let pg = PgCluster::start(PgOptions::default());
    let proxy =
        start_proxy(&pg, "[proxy]\nauth = \"md5\"\n[[users]]\nname = \"md5_user\"\npassword = \"md5_pass\"\n").await;
    let addr = proxy.local_addr();
    let c = try_connect(addr, "md5_user", Some("md5_pass"), "postgres").await.expect("right password");
    // The server itself demands MD5 from this user, so this also proves MD5 towards the server.
    assert_eq!(scalar(&c, "select current_user").await.unwrap(), "md5_user");
    expect_28p01(addr, "md5_user", "nope").await;
    expect_28p01(addr, "ghost", "nope").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cleartext_password_to_server() {
    let pg = PgCluster::start(PgOptions::default());
    let proxy = start_proxy(&pg, "[[users]]\nname = \"clear_user\"\npassword = \"clear_pass\"\n").await;
    let c = try_connect(proxy.local_addr(), "clear_user", Some("clear_pass"), "postgres").await.unwrap();
    assert_eq!(scalar(&c, "select current_user").await.unwrap(), "clear_user");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_query_with_scram_pass_through() {
    let pg = PgCluster::start(PgOptions::default());
    // No user list: verifiers come from pg_shadow, and the proxy logs in to the server with the
    // keys recovered from the client's own SCRAM proof (the server demands SCRAM for scram_user).
    let proxy = start_proxy(&pg, "[auth_query]\nuser = \"postgres\"\n").await;
    let addr = proxy.local_addr();
    let a = try_connect(addr, "scram_user", Some("scram_pass"), "postgres").await.expect("pass-through login");
    assert_eq!(scalar(&a, "select current_user").await.unwrap(), "scram_user");
    // A second server connection (the first is held by an open transaction) uses the same keys.
    a.simple_query("begin").await.unwrap();
    let b = try_connect(addr, "scram_user", Some("scram_pass"), "postgres").await.unwrap();
    assert_eq!(scalar(&b, "select current_user").await.unwrap(), "scram_user");
    let pa = scalar(&a, "select pg_backend_pid()").await.unwrap();
    let pb = scalar(&b, "select pg_backend_pid()").await.unwrap();
    assert_ne!(pa, pb, "two server connections were needed");
    a.simple_query("commit").await.unwrap();
    expect_28p01(addr, "scram_user", "bad").await;
    expect_28p01(addr, "no_such_role", "bad").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_query_with_md5_hash_pass_through() {
    let pg = PgCluster::start(PgOptions::default());
    let proxy = start_proxy(&pg, "[proxy]\nauth = \"md5\"\n[auth_query]\nuser = \"postgres\"\n").await;
    let addr = proxy.local_addr();
    let c = try_connect(addr, "md5_user", Some("md5_pass"), "postgres").await.expect("md5 pass-through");
    assert_eq!(scalar(&c, "select current_user").await.unwrap(), "md5_user");
    expect_28p01(addr, "md5_user", "bad").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trust_passes_any_user_on() {
    let pg = PgCluster::start(PgOptions::default());
    let proxy = start_proxy(&pg, "[proxy]\nauth = \"trust\"\n").await;
    let c = try_connect(proxy.local_addr(), "app", None, "app_db").await.unwrap();
    assert_eq!(scalar(&c, "select current_user || '@' || current_database()").await.unwrap(), "app@app_db");
    // A database the server does not have: the server's own error comes through.
    let err = try_connect(proxy.local_addr(), "app", None, "no_such_db").await.err().unwrap();
    assert_eq!(sqlstate(&err), "3D000", "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configured_scram_verifier_logs_in_and_passes_keys_to_the_server() {
    let pg = PgCluster::start(PgOptions::default());
    let verifier = pg.psql("postgres", "postgres", "select rolpassword from pg_authid where rolname = 'scram_user'");
    assert!(verifier.starts_with("SCRAM-SHA-256$"), "{verifier}");
    // Only the verifier is configured: the proxy never knows the password, yet logs in to the
    // server (which demands SCRAM) with the keys recovered from the client's proof.
    let toml = format!("[[users]]\nname = \"scram_user\"\nscram_verifier = \"{verifier}\"\n");
    let proxy = start_proxy(&pg, &toml).await;
    let addr = proxy.local_addr();
    let c = try_connect(addr, "scram_user", Some("scram_pass"), "postgres").await.expect("verifier login");
    assert_eq!(scalar(&c, "select current_user").await.unwrap(), "scram_user");
    expect_28p01(addr, "scram_user", "not it").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_query_that_cannot_connect_says_so() {
    let pg = PgCluster::start(PgOptions::default());
    // scram_user needs a password the config does not give.
    let proxy = start_proxy(&pg, "[auth_query]\nuser = \"scram_user\"\n").await;
    let err = try_connect(proxy.local_addr(), "md5_user", Some("md5_pass"), "postgres").await.unwrap_err();
    assert!(sqlstate(&err).starts_with("08"), "{err}");
    assert!(message(&err).contains("auth_query"), "{err}");
}
