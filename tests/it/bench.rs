//! `pgweir bench` end to end: the real binary initialises the pgbench tables on a real cluster,
//! sweeps two pool sizes through the PgWeir processes it starts (and the server directly), and
//! writes a JSON report and an SVG chart whose contents are checked here.

use std::process::Command;
use std::time::{Duration, Instant};

use crate::harness::pg::{PgCluster, PgOptions};

#[test]
fn bench_sweeps_pool_sizes_and_recommends_one() {
    let pg = PgCluster::start(PgOptions::default());
    let dir = tempfile::tempdir().unwrap();
    let (json, chart) = (dir.path().join("bench.json"), dir.path().join("bench.svg"));
    let started = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_pgweir"))
        .args(["bench", "--upstream", &pg.url("postgres", "postgres"), "--init", "--scale", "1", "--direct"])
        .args(["--pool-sizes", "2,4", "--clients", "4", "--duration", "2s", "--warmup", "0s", "--json"])
        .arg(&json)
        .arg("--chart")
        .arg(&chart)
        .output()
        .unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "pgweir bench failed ({}):\n{stdout}\n{stderr}", out.status);
    assert!(started.elapsed() < Duration::from_secs(30), "took {:?}", started.elapsed());
    assert!(stdout.starts_with("target  pool mode"), "{stdout}");
    assert!(stdout.contains("transaction mode, 4 clients: pool size"), "{stdout}");

    let report: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(report["settings"]["scale"], 1);
    let results = report["results"].as_array().unwrap();
    let find = |target: &str, pool: Option<u64>| {
        results
            .iter()
            .find(|r| r["target"] == target && r["pool_size"].as_u64() == pool)
            .unwrap_or_else(|| panic!("no {target} {pool:?} result in {results:#?}"))
    };
    for (target, pool) in [("direct", None), ("pgweir", Some(2)), ("pgweir", Some(4))] {
        let r = find(target, pool);
        assert_eq!(r["clients"], 4, "{r}");
        assert!(r["tps"].as_f64().unwrap() > 0.0, "{r}");
        assert_eq!(r["errors"], 0, "{r}");
        assert!(r["latency_ms"]["p99"].as_f64().unwrap() > 0.0, "{r}");
        let conns = r["server_connections"].as_i64().unwrap_or_else(|| panic!("no connection count: {r}"));
        match pool {
            Some(size) => {
                assert_eq!(r["pool_mode"], "transaction", "{r}");
                assert!(conns >= 1 && conns as u64 <= size, "pool {size} used {conns} server connections: {r}");
            }
            None => assert_eq!(conns, 4, "{r}"),
        }
    }
    assert_eq!(results.len(), 3, "{results:#?}");

    let recs = report["recommendations"].as_array().unwrap();
    assert_eq!(recs.len(), 1, "{recs:#?}");
    let size = recs[0]["pool_size"].as_u64().unwrap_or_else(|| panic!("no pool size recommended: {}", recs[0]));
    assert!([2, 4].contains(&size), "{}", recs[0]);

    let svg = std::fs::read_to_string(&chart).unwrap();
    assert!(
        svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"),
        "not an SVG: {}",
        &svg[..svg.len().min(200)]
    );
    assert!(svg.contains("pgweir transaction, 4 clients") && svg.contains("direct, 4 clients"));
}
