//! Configuration: Flink-familiar keys from `weir.toml`, overridden by environment variables,
//! overridden by flags (`-D key=value` and dedicated flags such as `--state-backend`).
//!
//! Every key is declared once in [`KEYS`] with its default and parser. An unknown key or a bad
//! value is an error that names the key and where it came from. The environment variable of a
//! key is `WEIR_` + the key upper-cased with `.` and `-` turned into `_`
//! (`parallelism.default` → `WEIR_PARALLELISM_DEFAULT`).

use std::path::{Path, PathBuf};
use std::time::Duration;

/// Which keyed-state backend the job uses.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum StateBackendKind {
    /// RocksDB: state larger than memory; the default.
    RocksDb,
    /// In-memory hash maps.
    Heap,
}

impl StateBackendKind {
    /// The configuration spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            StateBackendKind::RocksDb => "rocksdb",
            StateBackendKind::Heap => "heap",
        }
    }
}

/// The resolved configuration.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    /// `parallelism.default`.
    pub parallelism_default: u32,
    /// `pipeline.max-parallelism`: the number of key groups of jobs that set none (`None`: derived
    /// from the largest parallelism, as in Flink).
    pub max_parallelism: Option<u32>,
    /// `state.backend`.
    pub state_backend: StateBackendKind,
    /// `state.backend.rocksdb.localdir`: where RocksDB instances live while a job runs.
    pub state_dir: PathBuf,
    /// `taskmanager.memory.managed.size`: the per-process budget for keyed state (RocksDB block
    /// cache, write buffers and write-back caches).
    pub managed_memory_bytes: u64,
    /// `execution.buffer-timeout.interval`.
    pub buffer_timeout: Duration,
    /// `taskmanager.network.batch-size`: records per batch between tasks.
    pub batch_size: usize,
    /// `taskmanager.network.channel-capacity`: batches a channel holds before backpressure.
    pub channel_capacity: usize,
}

/// A configuration problem; every message names the key or file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// A key no part of Weir reads.
    #[error("unknown configuration key '{key}' (from {origin})")]
    UnknownKey {
        /// The key.
        key: String,
        /// Where it came from.
        origin: String,
    },
    /// A value that does not parse or is out of range.
    #[error("configuration key '{key}' (from {origin}): bad value '{value}': {reason}")]
    BadValue {
        /// The key.
        key: String,
        /// The value given.
        value: String,
        /// Where it came from.
        origin: String,
        /// What is wrong.
        reason: String,
    },
    /// A configuration file that cannot be read or parsed.
    #[error("configuration file '{path}': {detail}")]
    File {
        /// The file.
        path: String,
        /// What went wrong.
        detail: String,
    },
    /// `-D` without `=`.
    #[error("malformed -D '{0}': expected key=value")]
    MalformedOverride(String),
}

/// One configuration key.
pub struct KeySpec {
    /// The key.
    pub key: &'static str,
    /// Its default value, in configuration syntax.
    pub default: fn() -> String,
    /// One line of help.
    pub help: &'static str,
    apply: fn(&mut Config, &str) -> Result<(), String>,
}

/// Every key Weir reads.
pub static KEYS: &[KeySpec] = &[
    KeySpec {
        key: "parallelism.default",
        default: || "1".into(),
        help: "parallelism of operators when neither the operator, the job nor -p sets one",
        apply: |c, v| {
            c.parallelism_default = parse_positive(v)? as u32;
            Ok(())
        },
    },
    KeySpec {
        key: "pipeline.max-parallelism",
        default: || "auto".into(),
        help: "number of key groups when the job sets none: 1..32768, or auto (from the largest parallelism)",
        apply: |c, v| {
            c.max_parallelism = match v.trim() {
                "auto" | "-1" => None,
                other => {
                    let n = parse_positive(other)?;
                    if n > 32768 {
                        return Err("must be at most 32768".into());
                    }
                    Some(n as u32)
                }
            };
            Ok(())
        },
    },
    KeySpec {
        key: "state.backend",
        default: || "rocksdb".into(),
        help: "keyed state backend: rocksdb | heap",
        apply: |c, v| {
            c.state_backend = match v.trim().to_ascii_lowercase().as_str() {
                "rocksdb" => StateBackendKind::RocksDb,
                "heap" | "hashmap" => StateBackendKind::Heap,
                _ => return Err("expected rocksdb or heap".into()),
            };
            Ok(())
        },
    },
    KeySpec {
        key: "state.backend.rocksdb.localdir",
        default: || std::env::temp_dir().join("weir-state").display().to_string(),
        help: "directory for the RocksDB instances of running jobs",
        apply: |c, v| {
            if v.trim().is_empty() {
                return Err("must not be empty".into());
            }
            c.state_dir = PathBuf::from(v.trim());
            Ok(())
        },
    },
    KeySpec {
        key: "taskmanager.memory.managed.size",
        default: || "512mb".into(),
        help: "memory budget of keyed state per process (e.g. 256mb, 1gb)",
        apply: |c, v| {
            let bytes = parse_memory_size(v)?;
            if bytes < 16 << 20 {
                return Err("must be at least 16mb".into());
            }
            c.managed_memory_bytes = bytes;
            Ok(())
        },
    },
    KeySpec {
        key: "execution.buffer-timeout.interval",
        default: || "100ms".into(),
        help: "longest time a record waits in an output buffer (e.g. 100ms, 1s)",
        apply: |c, v| {
            c.buffer_timeout = parse_duration(v)?;
            if c.buffer_timeout.is_zero() {
                return Err("must be above 0".into());
            }
            Ok(())
        },
    },
    KeySpec {
        key: "taskmanager.network.batch-size",
        default: || "1024".into(),
        help: "records per batch between tasks",
        apply: |c, v| {
            c.batch_size = parse_positive(v)? as usize;
            Ok(())
        },
    },
    KeySpec {
        key: "taskmanager.network.channel-capacity",
        default: || "8".into(),
        help: "batches a channel between two subtasks holds before its producer blocks",
        apply: |c, v| {
            c.channel_capacity = parse_positive(v)? as usize;
            Ok(())
        },
    },
];

fn parse_positive(v: &str) -> Result<u64, String> {
    let n: u64 = v.trim().parse().map_err(|e| format!("{e}"))?;
    if n == 0 || n > u64::from(u32::MAX) {
        return Err("must be between 1 and 4294967295".into());
    }
    Ok(n)
}

/// Parses a memory size: a number of bytes, or a number with `kb`, `mb`, `gb` (powers of 1024;
/// `k`, `m`, `g`, `kib`, `mib`, `gib` too).
pub fn parse_memory_size(v: &str) -> Result<u64, String> {
    let s = v.trim().to_ascii_lowercase();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| "expected a size such as 256mb".to_string())?;
    let mult: u64 = match unit.trim() {
        "" | "b" | "bytes" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        "t" | "tb" | "tib" => 1 << 40,
        other => return Err(format!("unknown size unit '{other}' (use b, kb, mb, gb)")),
    };
    n.checked_mul(mult).ok_or_else(|| "too large".to_string())
}

/// Parses a duration: a number with `ms`, `s`, `min` or `h` (a bare number is milliseconds,
/// as in Flink).
pub fn parse_duration(v: &str) -> Result<Duration, String> {
    let s = v.trim().to_ascii_lowercase();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| "expected a duration such as 100ms or 1s".to_string())?;
    Ok(match unit.trim() {
        "" | "ms" | "milli" | "millis" => Duration::from_millis(n),
        "s" | "sec" | "secs" | "second" | "seconds" => Duration::from_secs(n),
        "min" | "m" | "minute" | "minutes" => Duration::from_secs(n * 60),
        "h" | "hour" | "hours" => Duration::from_secs(n * 3600),
        other => return Err(format!("unknown time unit '{other}' (use ms, s, min, h)")),
    })
}

/// The environment variable that overrides `key`.
pub fn env_var_for(key: &str) -> String {
    format!("WEIR_{}", key.to_ascii_uppercase().replace(['.', '-'], "_"))
}

impl Config {
    fn defaults() -> Config {
        let mut c = Config {
            parallelism_default: 1,
            max_parallelism: None,
            state_backend: StateBackendKind::RocksDb,
            state_dir: PathBuf::new(),
            managed_memory_bytes: 0,
            buffer_timeout: Duration::ZERO,
            batch_size: 0,
            channel_capacity: 0,
        };
        for k in KEYS {
            (k.apply)(&mut c, &(k.default)()).expect("defaults parse");
        }
        c
    }

    /// Every key with its effective value and help, in declaration order.
    pub fn describe(&self) -> Vec<(&'static str, String, &'static str)> {
        KEYS.iter()
            .map(|k| (k.key, self.value_of(k.key), k.help))
            .collect()
    }

    fn value_of(&self, key: &str) -> String {
        match key {
            "parallelism.default" => self.parallelism_default.to_string(),
            "pipeline.max-parallelism" => self
                .max_parallelism
                .map_or("auto".into(), |m| m.to_string()),
            "state.backend" => self.state_backend.as_str().to_string(),
            "state.backend.rocksdb.localdir" => self.state_dir.display().to_string(),
            "taskmanager.memory.managed.size" => format!("{}mb", self.managed_memory_bytes >> 20),
            "execution.buffer-timeout.interval" => format!("{}ms", self.buffer_timeout.as_millis()),
            "taskmanager.network.batch-size" => self.batch_size.to_string(),
            "taskmanager.network.channel-capacity" => self.channel_capacity.to_string(),
            other => unreachable!("key {other} is declared in KEYS but has no value_of arm"),
        }
    }

    fn set(&mut self, key: &str, value: &str, origin: &str) -> Result<(), ConfigError> {
        let spec = KEYS
            .iter()
            .find(|k| k.key == key)
            .ok_or_else(|| ConfigError::UnknownKey {
                key: key.to_string(),
                origin: origin.to_string(),
            })?;
        (spec.apply)(self, value).map_err(|reason| ConfigError::BadValue {
            key: key.to_string(),
            value: value.to_string(),
            origin: origin.to_string(),
            reason,
        })
    }

    /// Loads the configuration: defaults, then `file` (or `./weir.toml` when it exists and no
    /// file is named), then the environment, then `overrides` (`-D key=value`, in order).
    pub fn load(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
        overrides: &[String],
    ) -> Result<Config, ConfigError> {
        let mut c = Config::defaults();
        let implicit = PathBuf::from("weir.toml");
        let file = match file {
            Some(f) => Some(f.to_path_buf()),
            None => implicit.is_file().then_some(implicit),
        };
        if let Some(path) = file {
            let origin = path.display().to_string();
            let text = std::fs::read_to_string(&path).map_err(|e| ConfigError::File {
                path: origin.clone(),
                detail: e.to_string(),
            })?;
            let table: toml::Table =
                text.parse()
                    .map_err(|e: toml::de::Error| ConfigError::File {
                        path: origin.clone(),
                        detail: e.message().to_string(),
                    })?;
            let mut flat = Vec::new();
            flatten("", &toml::Value::Table(table), &mut flat);
            for (k, v) in flat {
                c.set(&k, &v, &origin)?;
            }
        }
        let env: Vec<(String, String)> = env.into_iter().collect();
        for spec in KEYS {
            let var = env_var_for(spec.key);
            if let Some((_, v)) = env.iter().find(|(k, _)| *k == var) {
                c.set(spec.key, v, &format!("environment variable {var}"))?;
            }
        }
        for o in overrides {
            let (k, v) = o
                .split_once('=')
                .ok_or_else(|| ConfigError::MalformedOverride(o.clone()))?;
            c.set(k.trim(), v.trim(), &format!("-D {}", k.trim()))?;
        }
        Ok(c)
    }
}

fn flatten(prefix: &str, value: &toml::Value, out: &mut Vec<(String, String)>) {
    match value {
        toml::Value::Table(t) => {
            for (k, v) in t {
                let key = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                flatten(&key, v, out);
            }
        }
        toml::Value::String(s) => out.push((prefix.to_string(), s.clone())),
        other => out.push((prefix.to_string(), other.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_beat_the_environment_which_beats_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("weir.toml");
        std::fs::write(&file, "parallelism.default = 3\n[taskmanager.network]\nbatch-size = 7\n\"channel-capacity\" = 2\n").unwrap();
        let c = Config::load(Some(&file), vec![], &[]).unwrap();
        assert_eq!(
            (c.parallelism_default, c.batch_size, c.channel_capacity),
            (3, 7, 2)
        );
        let env = vec![("WEIR_PARALLELISM_DEFAULT".to_string(), "4".to_string())];
        let c = Config::load(Some(&file), env.clone(), &[]).unwrap();
        assert_eq!(c.parallelism_default, 4);
        let c = Config::load(Some(&file), env, &["parallelism.default=5".into()]).unwrap();
        assert_eq!(c.parallelism_default, 5);
    }

    #[test]
    fn an_unknown_key_in_the_file_is_an_error_naming_key_and_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("weir.toml");
        std::fs::write(&file, "state.backnd = \"heap\"\n").unwrap();
        let err = Config::load(Some(&file), vec![], &[]).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "unknown configuration key 'state.backnd' (from {})",
                file.display()
            )
        );
    }

    #[test]
    fn a_bad_value_names_the_key_the_value_and_the_flag() {
        let err = Config::load(
            None,
            vec![],
            &["taskmanager.memory.managed.size=lots".into()],
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "configuration key 'taskmanager.memory.managed.size' (from -D taskmanager.memory.managed.size): bad value 'lots': expected a size such as 256mb"
        );
    }

    #[test]
    fn sizes_and_durations_parse_with_units() {
        assert_eq!(parse_memory_size("256mb"), Ok(256 << 20));
        assert_eq!(parse_memory_size("1 GiB"), Ok(1 << 30));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("2s"), Ok(Duration::from_secs(2)));
        assert!(parse_duration("2 fortnights").is_err());
    }
}
