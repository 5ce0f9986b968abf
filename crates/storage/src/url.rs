//! [`StorageUrl`]: where checkpoints and savepoints live, parsed from the user's text.
//!
//! Accepted forms:
//!
//! | text | meaning |
//! |---|---|
//! | `file:///abs/dir` or `/abs/dir` | a local directory (created on open) |
//! | `memory://` or `memory://name` | an in-process store; the same name opens the same store |
//! | `s3://bucket` or `s3://bucket/prefix` | an S3 bucket (or S3-compatible server), under a key prefix |
//!
//! Schemes are case-insensitive and `s3a://` (Hadoop's spelling) is read as `s3://`. Empty
//! segments of a prefix are dropped (`s3://b/a//c/` has prefix `a/c`); `.` and `..` are refused.
//!
//! Anything else is a [`UrlError`] that names the URL and what is wrong with it.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

/// Why a string is not a storage URL.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UrlError {
    /// The URL was empty.
    #[error("storage URL must not be empty; use file:///abs/dir, memory:// or s3://bucket/prefix")]
    Empty,
    /// The scheme is not one Weir can store to.
    #[error("storage URL '{url}' has unknown scheme '{scheme}'; use file://, memory:// or s3://")]
    UnknownScheme {
        /// The rejected URL.
        url: String,
        /// Its scheme.
        scheme: String,
    },
    /// A local path was relative; the working directory differs between processes.
    #[error(
        "storage URL '{url}' is a relative file path; use an absolute path such as file:///abs/dir"
    )]
    RelativeFilePath {
        /// The rejected URL.
        url: String,
    },
    /// A `file://` URL named a host (`file://host/dir`), usually a missing third slash.
    #[error(
        "storage URL '{url}' names host '{host}'; a local directory is file:///abs/dir (three slashes)"
    )]
    FileHost {
        /// The rejected URL.
        url: String,
        /// The host it named.
        host: String,
    },
    /// An `s3://` URL without a bucket.
    #[error("storage URL '{url}' has no bucket; use s3://bucket/prefix")]
    MissingBucket {
        /// The rejected URL.
        url: String,
    },
    /// The URL had a query or fragment, or a `.`/`..` segment in its prefix.
    #[error("storage URL '{url}' is not valid: {reason}")]
    Malformed {
        /// The rejected URL.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
}

/// A parsed storage location: which backend, and the root inside it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum StorageUrl {
    /// A local directory, absolute.
    File {
        /// The directory every object path is relative to.
        root: PathBuf,
    },
    /// An in-process store. Every `memory://<name>` in one process opens the same store, so a
    /// JobMaster and TaskManagers running embedded (`weir local`) see each other's files;
    /// `memory://` is the store with the empty name.
    Memory {
        /// The store's name (may be empty).
        name: String,
        /// The key prefix inside the store, without leading or trailing `/` (may be empty).
        prefix: String,
    },
    /// An S3 bucket or a bucket of an S3-compatible server.
    S3 {
        /// The bucket name.
        bucket: String,
        /// The key prefix inside the bucket, without leading or trailing `/` (may be empty).
        prefix: String,
    },
}

impl StorageUrl {
    /// Parses `text`; see the [module docs](self) for the accepted forms.
    pub fn parse(text: &str) -> Result<Self, UrlError> {
        let text = text.trim();
        if text.is_empty() {
            return Err(UrlError::Empty);
        }
        if text.starts_with('/') {
            return Ok(StorageUrl::File {
                root: PathBuf::from(text),
            });
        }
        let Some((scheme, rest)) = text.split_once("://") else {
            // No `scheme://`: a relative path such as `chk` or `./chk`, or `file:chk`.
            return match text.split_once(':') {
                Some((scheme, _)) if !scheme.eq_ignore_ascii_case("file") && is_scheme(scheme) => {
                    Err(UrlError::UnknownScheme {
                        url: text.to_owned(),
                        scheme: scheme.to_owned(),
                    })
                }
                _ => Err(UrlError::RelativeFilePath {
                    url: text.to_owned(),
                }),
            };
        };
        match scheme.to_ascii_lowercase().as_str() {
            "file" => parse_file(text),
            "memory" => {
                let (name, prefix) = split_authority(text, rest)?;
                Ok(StorageUrl::Memory { name, prefix })
            }
            "s3" | "s3a" => {
                let (bucket, prefix) = split_authority(text, rest)?;
                if bucket.is_empty() {
                    return Err(UrlError::MissingBucket {
                        url: text.to_owned(),
                    });
                }
                Ok(StorageUrl::S3 { bucket, prefix })
            }
            other => Err(UrlError::UnknownScheme {
                url: text.to_owned(),
                scheme: other.to_owned(),
            }),
        }
    }

    /// The key prefix inside the store that every object path is relative to (empty for
    /// `file://`, whose prefix is part of the directory).
    pub fn prefix(&self) -> &str {
        match self {
            StorageUrl::File { .. } => "",
            StorageUrl::Memory { prefix, .. } | StorageUrl::S3 { prefix, .. } => prefix,
        }
    }
}

impl FromStr for StorageUrl {
    type Err = UrlError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl fmt::Display for StorageUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StorageUrl::File { root } => match url::Url::from_file_path(root) {
                Ok(u) => write!(f, "{u}"),
                Err(()) => write!(f, "file://{}", root.display()),
            },
            StorageUrl::Memory { name, prefix } => write_with_prefix(f, "memory", name, prefix),
            StorageUrl::S3 { bucket, prefix } => write_with_prefix(f, "s3", bucket, prefix),
        }
    }
}

fn write_with_prefix(
    f: &mut fmt::Formatter<'_>,
    scheme: &str,
    authority: &str,
    prefix: &str,
) -> fmt::Result {
    write!(f, "{scheme}://{authority}")?;
    if !prefix.is_empty() {
        write!(f, "/{prefix}")?;
    }
    Ok(())
}

/// RFC 3986: `ALPHA *( ALPHA / DIGIT / "+" / "-" / "." )`.
fn is_scheme(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
}

fn parse_file(text: &str) -> Result<StorageUrl, UrlError> {
    let url = url::Url::parse(text).map_err(|e| UrlError::Malformed {
        url: text.to_owned(),
        reason: e.to_string(),
    })?;
    reject_query_and_fragment(text, &url)?;
    if let Some(host) = url.host_str() {
        if !host.is_empty() && host != "localhost" {
            return Err(UrlError::FileHost {
                url: text.to_owned(),
                host: host.to_owned(),
            });
        }
    }
    let root = url.to_file_path().map_err(|()| UrlError::Malformed {
        url: text.to_owned(),
        reason: "not a local file path".to_owned(),
    })?;
    if !root.is_absolute() {
        return Err(UrlError::RelativeFilePath {
            url: text.to_owned(),
        });
    }
    Ok(StorageUrl::File { root })
}

fn reject_query_and_fragment(text: &str, url: &url::Url) -> Result<(), UrlError> {
    if url.query().is_some() || url.fragment().is_some() {
        return Err(UrlError::Malformed {
            url: text.to_owned(),
            reason: "a query ('?') or fragment ('#') is not allowed".to_owned(),
        });
    }
    Ok(())
}

/// Splits `authority/prefix/...` into the authority and a normalised prefix (empty segments
/// dropped, so `s3://b/a//c/` has prefix `a/c`).
fn split_authority(text: &str, rest: &str) -> Result<(String, String), UrlError> {
    if rest.contains(['?', '#']) {
        return Err(UrlError::Malformed {
            url: text.to_owned(),
            reason: "a query ('?') or fragment ('#') is not allowed".to_owned(),
        });
    }
    let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
    let mut segments = Vec::new();
    for seg in path.split('/').filter(|s| !s.is_empty()) {
        if seg == "." || seg == ".." {
            return Err(UrlError::Malformed {
                url: text.to_owned(),
                reason: format!("the prefix must not contain a '{seg}' segment"),
            });
        }
        segments.push(seg);
    }
    let prefix = segments.join("/");
    object_store::path::Path::parse(&prefix).map_err(|e| UrlError::Malformed {
        url: text.to_owned(),
        reason: e.to_string(),
    })?;
    Ok((authority.to_owned(), prefix))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(root: &str) -> StorageUrl {
        StorageUrl::File {
            root: PathBuf::from(root),
        }
    }

    #[test]
    fn file_urls_and_bare_absolute_paths_parse_to_a_directory() {
        assert_eq!(
            StorageUrl::parse("file:///tmp/weir").unwrap(),
            file("/tmp/weir")
        );
        assert_eq!(StorageUrl::parse("/tmp/weir").unwrap(), file("/tmp/weir"));
        assert_eq!(
            StorageUrl::parse("file://localhost/tmp/weir").unwrap(),
            file("/tmp/weir")
        );
        assert_eq!(
            StorageUrl::parse("file:///tmp/with%20space").unwrap(),
            file("/tmp/with space")
        );
    }

    #[test]
    fn memory_urls_parse_with_and_without_a_name() {
        let m = |name: &str, prefix: &str| StorageUrl::Memory {
            name: name.into(),
            prefix: prefix.into(),
        };
        assert_eq!(StorageUrl::parse("memory://").unwrap(), m("", ""));
        assert_eq!(StorageUrl::parse("memory://jobs").unwrap(), m("jobs", ""));
        assert_eq!(
            StorageUrl::parse("memory://jobs/a/b/").unwrap(),
            m("jobs", "a/b")
        );
    }

    #[test]
    fn s3_urls_parse_to_a_bucket_and_a_normalised_prefix() {
        let s3 = |bucket: &str, prefix: &str| StorageUrl::S3 {
            bucket: bucket.into(),
            prefix: prefix.into(),
        };
        assert_eq!(StorageUrl::parse("s3://bkt").unwrap(), s3("bkt", ""));
        assert_eq!(StorageUrl::parse("s3://bkt/").unwrap(), s3("bkt", ""));
        assert_eq!(
            StorageUrl::parse("s3://bkt/weir//checkpoints/").unwrap(),
            s3("bkt", "weir/checkpoints")
        );
        assert_eq!(StorageUrl::parse("S3://bkt/p").unwrap(), s3("bkt", "p"));
    }

    #[test]
    fn a_parsed_url_prints_as_text_that_parses_back_to_it() {
        for text in [
            "file:///tmp/weir",
            "file:///tmp/with%20space",
            "memory://",
            "memory://jobs/a",
            "s3://bkt",
            "s3://bkt/weir/checkpoints",
        ] {
            let url = StorageUrl::parse(text).unwrap();
            assert_eq!(url.to_string(), text);
            assert_eq!(StorageUrl::parse(&url.to_string()).unwrap(), url);
        }
    }

    #[test]
    fn an_unknown_scheme_is_rejected_and_named() {
        let err = StorageUrl::parse("gs://bucket/x").unwrap_err();
        assert_eq!(
            err,
            UrlError::UnknownScheme {
                url: "gs://bucket/x".into(),
                scheme: "gs".into()
            }
        );
        assert_eq!(
            err.to_string(),
            "storage URL 'gs://bucket/x' has unknown scheme 'gs'; use file://, memory:// or s3://"
        );
        assert!(matches!(
            StorageUrl::parse("hdfs:foo"),
            Err(UrlError::UnknownScheme { .. })
        ));
    }

    #[test]
    fn a_relative_file_path_is_rejected_and_named() {
        for text in ["checkpoints", "./checkpoints", "../x/y", "file:checkpoints"] {
            let err = StorageUrl::parse(text).unwrap_err();
            assert_eq!(
                err,
                UrlError::RelativeFilePath { url: text.into() },
                "{text}"
            );
            assert!(err.to_string().contains(text));
        }
    }

    #[test]
    fn a_file_url_with_two_slashes_names_the_host_it_mistook() {
        let err = StorageUrl::parse("file://tmp/weir").unwrap_err();
        assert_eq!(
            err,
            UrlError::FileHost {
                url: "file://tmp/weir".into(),
                host: "tmp".into()
            }
        );
        assert!(err.to_string().contains("three slashes"));
    }

    #[test]
    fn an_s3_url_without_a_bucket_is_rejected() {
        for text in ["s3://", "s3:///prefix"] {
            let err = StorageUrl::parse(text).unwrap_err();
            assert_eq!(err, UrlError::MissingBucket { url: text.into() });
            assert_eq!(
                err.to_string(),
                format!("storage URL '{text}' has no bucket; use s3://bucket/prefix")
            );
        }
    }

    #[test]
    fn malformed_urls_are_rejected_with_a_reason() {
        for text in [
            "s3://b/a/../c",
            "s3://b/x?versionId=1",
            "memory://m#frag",
            "file:///tmp?x=1",
        ] {
            let err = StorageUrl::parse(text).unwrap_err();
            assert!(matches!(err, UrlError::Malformed { .. }), "{text}: {err:?}");
            assert!(err.to_string().contains(text));
        }
        assert_eq!(StorageUrl::parse("  "), Err(UrlError::Empty));
    }
}
