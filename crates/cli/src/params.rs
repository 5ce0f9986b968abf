//! `--param key=value` job parameters.

use std::collections::BTreeMap;
use std::str::FromStr;

/// Why a job parameter is unusable. Every message names the parameter.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParamError {
    /// `--param` without `=`.
    #[error("malformed --param '{0}': expected key=value")]
    Malformed(String),
    /// A key the job does not declare.
    #[error("unknown --param '{key}' for job '{job}' (known: {known})")]
    Unknown {
        /// The key given.
        key: String,
        /// The job.
        job: String,
        /// The keys the job declares.
        known: String,
    },
    /// A required key was not given.
    #[error("job '{job}' needs --param {key}=…")]
    Missing {
        /// The job.
        job: String,
        /// The missing key.
        key: String,
    },
    /// A value that does not parse or is out of range.
    #[error("--param {key}={value}: {reason}")]
    Invalid {
        /// The key.
        key: String,
        /// The value given.
        value: String,
        /// What is wrong with it.
        reason: String,
    },
}

/// A job's parameters, as given on the command line.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Params {
    job: String,
    values: BTreeMap<String, String>,
}

impl Params {
    /// Parses `key=value` strings for `job`. A repeated key keeps the last value.
    pub fn parse(job: &str, raw: &[String]) -> Result<Self, ParamError> {
        let mut values = BTreeMap::new();
        for item in raw {
            let (k, v) = item
                .split_once('=')
                .filter(|(k, _)| !k.trim().is_empty())
                .ok_or_else(|| ParamError::Malformed(item.clone()))?;
            values.insert(k.trim().to_string(), v.to_string());
        }
        Ok(Self {
            job: job.to_string(),
            values,
        })
    }

    /// Parameters built in code (tests, benchmarks).
    pub fn from_pairs(job: &str, pairs: &[(&str, &str)]) -> Self {
        Self {
            job: job.to_string(),
            values: pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }

    /// The job these parameters are for.
    pub fn job(&self) -> &str {
        &self.job
    }

    /// Every key given.
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.values.keys().map(String::as_str)
    }

    /// The raw value of `key`.
    pub fn raw(&self, key: &str) -> Option<&str> {
        self.values.get(key).map(String::as_str)
    }

    /// The value of `key` parsed as `T`, if given.
    pub fn get<T: FromStr>(&self, key: &str) -> Result<Option<T>, ParamError>
    where
        T::Err: std::fmt::Display,
    {
        match self.values.get(key) {
            None => Ok(None),
            Some(v) => v
                .parse()
                .map(Some)
                .map_err(|e: T::Err| ParamError::Invalid {
                    key: key.to_string(),
                    value: v.clone(),
                    reason: e.to_string(),
                }),
        }
    }

    /// The value of `key` parsed as `T`, or `default`.
    pub fn get_or<T: FromStr>(&self, key: &str, default: T) -> Result<T, ParamError>
    where
        T::Err: std::fmt::Display,
    {
        Ok(self.get(key)?.unwrap_or(default))
    }

    /// The value of `key` parsed as `T`; an error naming it when absent.
    pub fn require<T: FromStr>(&self, key: &str) -> Result<T, ParamError>
    where
        T::Err: std::fmt::Display,
    {
        self.get(key)?.ok_or_else(|| ParamError::Missing {
            job: self.job.clone(),
            key: key.to_string(),
        })
    }

    /// An [`ParamError::Invalid`] for `key`'s value.
    pub fn invalid(&self, key: &str, reason: impl Into<String>) -> ParamError {
        ParamError::Invalid {
            key: key.to_string(),
            value: self.raw(key).unwrap_or_default().to_string(),
            reason: reason.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_param_without_equals_is_malformed() {
        let err = Params::parse("j", &["keys".into()]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "malformed --param 'keys': expected key=value"
        );
    }

    #[test]
    fn a_bad_number_names_the_key_and_value() {
        let p = Params::parse("j", &["keys=ten".into()]).unwrap();
        let err = p.get::<u64>("keys").unwrap_err();
        assert_eq!(
            err.to_string(),
            "--param keys=ten: invalid digit found in string"
        );
    }
}
