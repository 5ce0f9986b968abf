//! Who may talk to whom: a binary's build identity (sent in `Register`) and a job's plan
//! fingerprint (sent with every `DeployTask`). Every process of a cluster runs the same binary
//! and rebuilds the same plan from the same catalog; these make a mismatch an error naming both
//! sides, instead of tasks wired from two different graphs.

use std::path::Path;
use std::sync::OnceLock;
use weir_types::stable_hash64;

/// Bytes read at each sample point of the executable.
const SAMPLE: usize = 64 << 10;
/// Sample points spread over the executable (its first and last bytes among them).
const SAMPLES: u64 = 48;

/// The build identity of the executable at `path`: `<crate version>+<16 hex digits>`, a stable
/// hash of its size and of 64 KiB read at 48 points spread evenly over it (3 MiB of a binary
/// that may be hundreds: a rebuild changes its size or those bytes, and hashing all of it would
/// cost every process start a second).
pub fn build_identity_of(path: &Path) -> std::io::Result<String> {
    use std::io::{Read, Seek, SeekFrom};
    let mut file = std::fs::File::open(path)?;
    let size = file.metadata()?.len();
    let mut hash = stable_hash64(&size.to_le_bytes());
    let mut buf = vec![0u8; SAMPLE];
    let span = size.saturating_sub(SAMPLE as u64);
    for i in 0..SAMPLES {
        let at = span * i / (SAMPLES - 1);
        file.seek(SeekFrom::Start(at))?;
        let n = file.read(&mut buf)?;
        let mut chunk = hash.to_le_bytes().to_vec();
        chunk.extend_from_slice(&buf[..n]);
        hash = stable_hash64(&chunk);
    }
    Ok(format!("{}+{hash:016x}", env!("CARGO_PKG_VERSION")))
}

/// This process's build identity ([`build_identity_of`] its own executable), computed once.
/// A process whose executable cannot be read gets `<version>+unknown`.
pub fn build_identity() -> &'static str {
    static ID: OnceLock<String> = OnceLock::new();
    ID.get_or_init(|| {
        std::env::current_exe()
            .and_then(|p| build_identity_of(&p))
            .unwrap_or_else(|_| format!("{}+unknown", env!("CARGO_PKG_VERSION")))
    })
}

/// The fingerprint of a plan (its JSON encoding, which is deterministic) built by `build`.
pub fn plan_fingerprint(plan_json: &[u8], build: &str) -> String {
    let mut bytes = build.as_bytes().to_vec();
    bytes.push(0);
    bytes.extend_from_slice(plan_json);
    format!("{:016x}", stable_hash64(&bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_bytes_give_the_same_identity_and_one_changed_byte_another() {
        let dir = std::env::temp_dir().join(format!("weir-identity-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (a, b) = (dir.join("a"), dir.join("b"));
        let bytes: Vec<u8> = (0..1_000_000u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(&a, &bytes).unwrap();
        std::fs::write(&b, &bytes).unwrap();
        assert_eq!(
            build_identity_of(&a).unwrap(),
            build_identity_of(&b).unwrap()
        );
        let mut changed = bytes.clone();
        changed[0] ^= 1;
        std::fs::write(&b, &changed).unwrap();
        assert_ne!(
            build_identity_of(&a).unwrap(),
            build_identity_of(&b).unwrap()
        );
        std::fs::write(&b, &bytes[..bytes.len() - 1]).unwrap();
        assert_ne!(
            build_identity_of(&a).unwrap(),
            build_identity_of(&b).unwrap()
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_plan_fingerprint_depends_on_the_plan_and_on_the_build() {
        let f = plan_fingerprint(b"{\"p\":1}", "0.1.0+aa");
        assert_eq!(f, plan_fingerprint(b"{\"p\":1}", "0.1.0+aa"));
        assert_ne!(f, plan_fingerprint(b"{\"p\":2}", "0.1.0+aa"));
        assert_ne!(f, plan_fingerprint(b"{\"p\":1}", "0.1.0+bb"));
    }
}
