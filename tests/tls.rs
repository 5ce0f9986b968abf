//! TLS on every port, with real processes on loopback and certificates from
//! `scripts/make-certs.sh`: a cluster with mutual TLS runs a checkpointed job across two
//! TaskManagers to its exactly-once end; a client that trusts another CA, or speaks plaintext,
//! is refused at the handshake; REST answers over HTTPS only to a client that trusts the CA.

mod common;

use common::procs::{start_jobmanager, start_taskmanager_with, token, weir_cmd};
use std::path::Path;
use std::process::{Command, Stdio};

fn certs(dir: &Path) {
    let ok = Command::new("scripts/make-certs.sh")
        .arg(dir)
        .stdout(Stdio::null())
        .status()
        .expect("scripts/make-certs.sh runs (it needs openssl)")
        .success();
    assert!(ok, "scripts/make-certs.sh {}", dir.display());
}

fn tls_defines(dir: &Path) -> Vec<String> {
    vec![
        "security.ssl.enabled=true".into(),
        format!("security.ssl.cert={}", dir.join("node.pem").display()),
        format!("security.ssl.key={}", dir.join("node.key").display()),
        format!("security.ssl.ca={}", dir.join("ca.pem").display()),
        "security.ssl.mutual=true".into(),
    ]
}

fn as_flags(defines: &[String]) -> Vec<String> {
    defines
        .iter()
        .flat_map(|d| ["-D".to_string(), d.clone()])
        .collect()
}

#[test]
fn a_mutual_tls_cluster_runs_a_job_exactly_once_and_refuses_other_cas_and_plaintext() {
    if Command::new("openssl").arg("version").output().is_err() {
        let required = std::env::var("WEIR_REQUIRE_BROWSER").is_ok_and(|v| v == "1");
        assert!(
            !required,
            "openssl is missing (scripts/install-test-tools.sh installs it)"
        );
        println!("SKIPPED: openssl is not installed");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (ours, theirs) = (dir.path().join("ours"), dir.path().join("theirs"));
    certs(&ours);
    certs(&theirs);
    let defines = tls_defines(&ours);
    let refs: Vec<&str> = defines.iter().map(String::as_str).collect();
    let (_jm, rpc, rest) = start_jobmanager(&refs);
    // TaskManagers get TLS through the environment (WEIR_ + the key, upper-cased).
    let env: Vec<(String, String)> = defines
        .iter()
        .map(|d| {
            let (k, v) = d.split_once('=').unwrap();
            (
                format!("WEIR_{}", k.to_uppercase().replace(['.', '-'], "_")),
                v.to_string(),
            )
        })
        .collect();
    let env_refs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let _tms: Vec<_> = (0..2)
        .map(|i| {
            start_taskmanager_with(
                &rpc,
                &format!("tm-{i}"),
                &dir.path().join(format!("tm-{i}")),
                &env_refs,
            )
        })
        .collect();
    let out = dir.path().join("out");
    let o = weir_cmd()
        .args(["run", "keyed-agg", "-p", "4", "--jobmanager", &rpc])
        .args(["--param", "records=100000", "--param", "rate=100000"])
        .args(["--param", "keys=2000", "--param", "emit=updates"])
        .args(["--param", &format!("output={}", out.display())])
        .args(["-D", "execution.checkpointing.interval=300ms"])
        .args([
            "-D",
            &format!(
                "state.checkpoints.dir=file://{}",
                dir.path().join("cp").display()
            ),
        ])
        .args(as_flags(&defines))
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "the job over TLS: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    // p=4 over two TaskManagers of two slots: records crossed the data plane, over TLS.
    common::assert_keyed_agg_exactly_once(&out, 42, 2000, 100_000);

    // A client that trusts another CA fails the handshake, naming the certificate.
    let o = weir_cmd()
        .args(["list", "--jobmanager", &rpc])
        .args(as_flags(&tls_defines(&theirs)))
        .output()
        .unwrap();
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr).to_lowercase();
    assert!(err.contains("certificate"), "{err}");
    // Plaintext is refused too.
    let o = weir_cmd()
        .args(["list", "--jobmanager", &rpc])
        .output()
        .unwrap();
    assert!(!o.status.success(), "a plaintext client got an answer");

    // REST over HTTPS: curl trusting our CA (and presenting our certificate) gets the API;
    // trusting theirs, it fails to verify the server (curl's exit code 60).
    let curl = |ca: &Path, with_cert: bool| {
        let mut c = Command::new("curl");
        c.args(["-s", "-o", "/dev/null", "-w", "%{http_code}"])
            .arg("--cacert")
            .arg(ca.join("ca.pem"));
        if with_cert {
            c.arg("--cert")
                .arg(ca.join("node.pem"))
                .arg("--key")
                .arg(ca.join("node.key"));
        }
        c.args(["-H", &format!("Authorization: {}", token().bearer())])
            .arg(format!("https://{rest}/overview"))
            .output()
            .expect("curl runs")
    };
    let good = curl(&ours, true);
    assert_eq!(String::from_utf8_lossy(&good.stdout), "200");
    // A TaskManager's /metrics is HTTPS too (a scrape carries the token): plain HTTP gets no
    // answer, HTTPS with the CA, a certificate and the token gets the text.
    let tms = Command::new("curl")
        .args(["-s", "--cacert"])
        .arg(ours.join("ca.pem"))
        .arg("--cert")
        .arg(ours.join("node.pem"))
        .arg("--key")
        .arg(ours.join("node.key"))
        .args(["-H", &format!("Authorization: {}", token().bearer())])
        .arg(format!("https://{rest}/taskmanagers"))
        .output()
        .unwrap();
    let tms: serde_json::Value = serde_json::from_slice(&tms.stdout).expect("JSON");
    let metrics = tms["taskmanagers"][0]["metrics_address"]
        .as_str()
        .expect("a metrics address")
        .to_string();
    let plain = Command::new("curl")
        .args(["-s", "-o", "/dev/null", "-w", "%{http_code}"])
        .arg(format!("http://{metrics}/metrics"))
        .output()
        .unwrap();
    assert_ne!(
        String::from_utf8_lossy(&plain.stdout),
        "200",
        "plain HTTP was answered"
    );
    let scraped = Command::new("curl")
        .args(["-s", "--cacert"])
        .arg(ours.join("ca.pem"))
        .arg("--cert")
        .arg(ours.join("node.pem"))
        .arg("--key")
        .arg(ours.join("node.key"))
        .args(["-H", &format!("Authorization: {}", token().bearer())])
        .arg(format!("https://{metrics}/metrics"))
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&scraped.stdout).contains("weir_taskmanager_slots"),
        "{scraped:?}"
    );
    let other = curl(&theirs, true);
    assert_eq!(other.status.code(), Some(60), "{other:?}");
    // Mutual TLS: without a client certificate the handshake fails.
    let anonymous = curl(&ours, false);
    assert_ne!(String::from_utf8_lossy(&anonymous.stdout), "200");
}
