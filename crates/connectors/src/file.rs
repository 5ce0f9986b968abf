//! The lines of a file or of a directory of files, read in parallel byte-range splits.
//!
//! See [`FileLinesSource`] for how the input is divided among subtasks.

use crate::{subtask_of, ConnectorError};
use std::fs::{self, File};
use std::io::{self, BufRead, BufReader, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use weir_runtime::{Source, SourceContext, SourcePoll, SourceReader, UserError};

/// The smallest split a file is cut into by default: 1 MiB.
pub const DEFAULT_MIN_SPLIT_BYTES: u64 = 1 << 20;

/// The read buffer of each reader.
const READ_BUFFER_BYTES: usize = 256 * 1024;

/// One input file as listed when the source was created.
#[derive(Clone, Debug, PartialEq, Eq)]
struct InputFile {
    path: PathBuf,
    len: u64,
}

/// A byte range `start..end` of input file number `file` (an index into the listing).
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct FileSplit {
    /// Index of the file in the source's sorted listing.
    pub file: usize,
    /// First byte of the range.
    pub start: u64,
    /// One past the last byte of the range.
    pub end: u64,
}

/// Cuts files of the given lengths into splits for `parallelism` subtasks: each file into
/// `min(parallelism, len / min_split)` (at least 1) ranges of nearly equal length, none shorter
/// than `min_split` unless the file is. Empty files get no split. Pure.
pub fn plan_splits(file_lens: &[u64], parallelism: u32, min_split: u64) -> Vec<FileSplit> {
    let min_split = min_split.max(1);
    let mut splits = Vec::new();
    for (file, &len) in file_lens.iter().enumerate() {
        if len == 0 {
            continue;
        }
        let n = (len / min_split).clamp(1, u64::from(parallelism.max(1)));
        // Boundaries len * i / n, computed in u128 so huge files cannot overflow.
        let at = |i: u64| (u128::from(len) * u128::from(i) / u128::from(n)) as u64;
        splits.extend((0..n).map(|i| FileSplit {
            file,
            start: at(i),
            end: at(i + 1),
        }));
    }
    splits
}

/// A source of the lines of a file or directory.
///
/// How the input is divided among subtasks (as Hadoop's `TextInputFormat`):
/// 1. [`FileLinesSource::new`] lists the input once — a file, or every regular, non-hidden file
///    of a directory sorted by name — and records each file's length. Every reader plans from
///    this same listing, so all subtasks agree on the splits.
/// 2. [`plan_splits`] cuts each file into `n = min(parallelism, len / min_split)` (at least 1)
///    byte ranges of nearly equal length; split `i` goes to subtask `i % parallelism`.
/// 3. A line belongs to the split in which it *starts*. A reader whose split starts at offset
///    `s > 0` looks at byte `s - 1` and skips through the first `\n` from there, so it starts at
///    the first line beginning at or after `s`; it then reads lines while they start before the
///    split's end, reading the last one through to its `\n` (or to the end of the file).
///    Hence every line is read exactly once, whatever the parallelism.
/// 4. Lines end at `\n`; a trailing `\r` is stripped; a last line without `\n` counts. A line
///    that is not UTF-8 fails the reader with an error naming the file and byte offset.
///
/// The listing is taken when the source is created: files added to a directory later are not
/// read, and a file is read up to the line that crosses its length at listing time.
#[derive(Clone, Debug)]
pub struct FileLinesSource {
    path: PathBuf,
    files: Arc<Vec<InputFile>>,
    min_split: u64,
}

impl FileLinesSource {
    /// Lists `path` (a file, or a directory whose regular, non-hidden files are read in name
    /// order) and checks that every file can be opened. The error names the unreadable path.
    pub fn new(path: impl Into<PathBuf>) -> Result<Self, ConnectorError> {
        let path = path.into();
        let files = list_input(&path)?;
        tracing::debug!(path = %path.display(), files = files.len(), "listed file input");
        let source = Self {
            path,
            files: Arc::new(files),
            min_split: DEFAULT_MIN_SPLIT_BYTES,
        };
        source.check()?;
        Ok(source)
    }

    /// Sets the smallest split (default [`DEFAULT_MIN_SPLIT_BYTES`]); tests use tiny splits to
    /// exercise split boundaries on small files.
    pub fn min_split_bytes(mut self, bytes: u64) -> Self {
        self.min_split = bytes.max(1);
        self
    }

    /// Checks again that the input path and every listed file can still be opened, so a CLI can
    /// fail before starting a job.
    pub fn check(&self) -> Result<(), ConnectorError> {
        fs::metadata(&self.path).map_err(|cause| unreadable(&self.path, cause))?;
        for file in self.files.iter() {
            File::open(&file.path).map_err(|cause| unreadable(&file.path, cause))?;
        }
        Ok(())
    }

    /// The path given to [`new`](Self::new).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The files that will be read, in order.
    pub fn files(&self) -> impl Iterator<Item = &Path> {
        self.files.iter().map(|f| f.path.as_path())
    }

    /// All splits for `parallelism` subtasks; split `i` is read by subtask `i % parallelism`.
    pub fn splits(&self, parallelism: u32) -> Vec<FileSplit> {
        let lens: Vec<u64> = self.files.iter().map(|f| f.len).collect();
        plan_splits(&lens, parallelism, self.min_split)
    }

    /// The reader of subtask `subtask` of `parallelism`.
    pub fn reader(
        &self,
        subtask: u32,
        parallelism: u32,
    ) -> Result<FileLinesReader, ConnectorError> {
        if parallelism == 0 || subtask >= parallelism {
            return Err(ConnectorError::BadSubtask {
                subtask,
                parallelism,
            });
        }
        let splits: Vec<FileSplit> = self
            .splits(parallelism)
            .into_iter()
            .enumerate()
            .filter(|(i, _)| *i as u64 % u64::from(parallelism) == u64::from(subtask))
            .map(|(_, split)| split)
            .collect();
        tracing::debug!(
            path = %self.path.display(),
            subtask,
            parallelism,
            splits = splits.len(),
            "file reader planned"
        );
        Ok(FileLinesReader {
            files: Arc::clone(&self.files),
            splits,
            next_split: 0,
            current: None,
            line: Vec::new(),
        })
    }
}

impl Source<String> for FileLinesSource {
    fn name(&self) -> String {
        "file".to_string()
    }

    fn create_reader(
        &self,
        ctx: &SourceContext,
        _restored: Option<&[u8]>,
    ) -> Result<Box<dyn SourceReader<String>>, UserError> {
        let (subtask, parallelism) = subtask_of(ctx)?;
        Ok(Box::new(self.reader(subtask, parallelism)?))
    }
}

fn unreadable(path: &Path, cause: io::Error) -> ConnectorError {
    ConnectorError::InputUnreadable {
        path: path.to_path_buf(),
        cause,
    }
}

/// The input files under `path`: itself if it is a file, else its regular non-hidden files
/// sorted by name.
fn list_input(path: &Path) -> Result<Vec<InputFile>, ConnectorError> {
    let meta = fs::metadata(path).map_err(|cause| unreadable(path, cause))?;
    if !meta.is_dir() {
        return Ok(vec![InputFile {
            path: path.to_path_buf(),
            len: meta.len(),
        }]);
    }
    let mut files = Vec::new();
    for entry in fs::read_dir(path).map_err(|cause| unreadable(path, cause))? {
        let entry = entry.map_err(|cause| unreadable(path, cause))?;
        if entry.file_name().to_string_lossy().starts_with('.') {
            continue;
        }
        let file = entry.path();
        // `fs::metadata` follows symlinks, so a link to a file counts as a file.
        let meta = fs::metadata(&file).map_err(|cause| unreadable(&file, cause))?;
        if meta.is_file() {
            files.push((
                entry.file_name(),
                InputFile {
                    path: file,
                    len: meta.len(),
                },
            ));
        }
    }
    files.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(files.into_iter().map(|(_, f)| f).collect())
}

/// The split being read: the open file and the offset where the next line starts.
struct OpenSplit {
    split: FileSplit,
    reader: BufReader<File>,
    offset: u64,
}

/// One subtask's reader over its splits, in order.
pub struct FileLinesReader {
    files: Arc<Vec<InputFile>>,
    splits: Vec<FileSplit>,
    next_split: usize,
    current: Option<OpenSplit>,
    /// Reused line buffer.
    line: Vec<u8>,
}

impl FileLinesReader {
    /// The splits this reader reads, in order.
    pub fn splits(&self) -> &[FileSplit] {
        &self.splits
    }

    /// Where the next line starts: the file being read and the byte offset in it. `None`
    /// between splits and at the end.
    pub fn position(&self) -> Option<(&Path, u64)> {
        self.current
            .as_ref()
            .map(|open| (self.files[open.split.file].path.as_path(), open.offset))
    }

    /// Opens `split` and positions it at the first line that starts at or after its start.
    fn open(&self, split: FileSplit) -> Result<OpenSplit, ConnectorError> {
        let path = &self.files[split.file].path;
        let file = File::open(path).map_err(|cause| unreadable(path, cause))?;
        let mut reader = BufReader::with_capacity(READ_BUFFER_BYTES, file);
        let mut offset = split.start;
        if split.start > 0 {
            // Skip through the first '\n' at or after start - 1: if byte start - 1 is '\n', a
            // line starts exactly at `start` and only that byte is skipped.
            reader
                .seek(SeekFrom::Start(split.start - 1))
                .map_err(|cause| unreadable(path, cause))?;
            let mut skipped = Vec::new();
            let n = reader
                .read_until(b'\n', &mut skipped)
                .map_err(|cause| unreadable(path, cause))?;
            offset = split.start - 1 + n as u64;
        }
        Ok(OpenSplit {
            split,
            reader,
            offset,
        })
    }
}

impl SourceReader<String> for FileLinesReader {
    fn poll(&mut self, out: &mut Vec<String>, max: usize) -> Result<SourcePoll, UserError> {
        let mut produced = 0;
        while produced < max {
            let Some(open) = &mut self.current else {
                let Some(&split) = self.splits.get(self.next_split) else {
                    return Ok(SourcePoll::Finished);
                };
                self.next_split += 1;
                self.current = Some(self.open(split)?);
                continue;
            };
            if open.offset >= open.split.end {
                self.current = None;
                continue;
            }
            let path = &self.files[open.split.file].path;
            self.line.clear();
            let n = open
                .reader
                .read_until(b'\n', &mut self.line)
                .map_err(|cause| unreadable(path, cause))?;
            if n == 0 {
                // The file is shorter than when it was listed.
                self.current = None;
                continue;
            }
            let line_start = open.offset;
            open.offset += n as u64;
            if self.line.last() == Some(&b'\n') {
                self.line.pop();
            }
            if self.line.last() == Some(&b'\r') {
                self.line.pop();
            }
            let text =
                std::str::from_utf8(&self.line).map_err(|e| ConnectorError::InvalidUtf8 {
                    path: path.clone(),
                    offset: line_start + e.valid_up_to() as u64,
                })?;
            out.push(text.to_string());
            produced += 1;
        }
        Ok(SourcePoll::More)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::{ctx, drain};
    use proptest::prelude::*;
    use std::io::Write;

    fn read_all(source: &FileLinesSource, parallelism: u32, max: usize) -> Vec<Vec<String>> {
        (0..parallelism)
            .map(|subtask| {
                let mut reader = source
                    .create_reader(&ctx("file", subtask, parallelism), None)
                    .expect("reader");
                drain(reader.as_mut(), max)
            })
            .collect()
    }

    /// The lines of `content` by the definition: split at '\n', a final empty piece is no line,
    /// a trailing '\r' is stripped.
    fn reference_lines(content: &str) -> Vec<String> {
        let mut pieces: Vec<&str> = content.split('\n').collect();
        if pieces.last() == Some(&"") {
            pieces.pop();
        }
        pieces
            .into_iter()
            .map(|l| l.strip_suffix('\r').unwrap_or(l).to_string())
            .collect()
    }

    fn line_strategy() -> impl Strategy<Value = (String, &'static str)> {
        (
            prop_oneof![Just(String::new()), "[a-z]{1,3}", "[a-zé€ ]{0,40}"],
            prop_oneof![Just("\n"), Just("\r\n")],
        )
    }

    fn file_strategy() -> impl Strategy<Value = String> {
        (
            prop::collection::vec(line_strategy(), 0..40),
            prop_oneof![Just(""), Just("\n"), Just("\r\n")],
        )
            .prop_map(|(lines, last_end)| {
                let mut content = String::new();
                let count = lines.len();
                for (i, (line, end)) in lines.into_iter().enumerate() {
                    content.push_str(&line);
                    content.push_str(if i + 1 == count { last_end } else { end });
                }
                content
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]

        #[test]
        fn every_line_is_read_exactly_once_whatever_the_parallelism(
            files in prop::collection::vec(file_strategy(), 1..4),
            parallelism in 1u32..5,
            min_split in 1u64..48,
            max in 1usize..6,
        ) {
            let dir = tempfile::tempdir().expect("tempdir");
            let mut expected = Vec::new();
            for (i, content) in files.iter().enumerate() {
                fs::write(dir.path().join(format!("in-{i:02}.txt")), content).expect("write");
                expected.extend(reference_lines(content));
            }
            let source = FileLinesSource::new(dir.path()).expect("source").min_split_bytes(min_split);
            let per_subtask = read_all(&source, parallelism, max);
            if parallelism == 1 {
                prop_assert_eq!(&per_subtask[0], &expected);
            }
            let mut got: Vec<String> = per_subtask.into_iter().flatten().collect();
            got.sort();
            expected.sort();
            prop_assert_eq!(got, expected);
        }
    }

    #[test]
    fn splits_cover_each_file_without_gaps_or_overlaps() {
        let splits = plan_splits(&[10 << 20, 0, 3, (5 << 20) / 2], 4, 1 << 20);
        let for_file = |f: usize| {
            splits
                .iter()
                .filter(|s| s.file == f)
                .copied()
                .collect::<Vec<_>>()
        };
        let big = for_file(0);
        assert_eq!(big.len(), 4);
        assert_eq!(big[0].start, 0);
        assert_eq!(big[3].end, 10 << 20);
        assert!(big.windows(2).all(|w| w[0].end == w[1].start));
        assert!(for_file(1).is_empty(), "an empty file has no split");
        assert_eq!(
            for_file(2),
            vec![FileSplit {
                file: 2,
                start: 0,
                end: 3
            }]
        );
        // 2.5 MiB: two splits, each at least 1 MiB.
        let mid = for_file(3);
        assert_eq!(mid.len(), 2);
        assert!(mid.iter().all(|s| s.end - s.start >= 1 << 20));
    }

    #[test]
    fn a_large_file_is_split_over_the_subtasks() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("big.txt");
        let mut file = io::BufWriter::new(File::create(&path).expect("create"));
        let lines = 300_000u64;
        for i in 0..lines {
            writeln!(file, "line number {i}").expect("write");
        }
        file.flush().expect("flush");
        drop(file);
        let source = FileLinesSource::new(&path).expect("source");
        assert_eq!(
            source.splits(3).len(),
            3,
            "a ~5 MiB file makes 3 splits for 3 subtasks"
        );
        let per_subtask = read_all(&source, 3, 1024);
        assert!(per_subtask.iter().all(|lines| !lines.is_empty()));
        let mut numbers: Vec<u64> = per_subtask
            .into_iter()
            .flatten()
            .map(|l| {
                l.trim_start_matches("line number ")
                    .parse()
                    .expect("number")
            })
            .collect();
        numbers.sort_unstable();
        assert_eq!(numbers, (0..lines).collect::<Vec<_>>());
    }

    #[test]
    fn a_directory_is_read_in_name_order_skipping_hidden_files_and_subdirectories() {
        let dir = tempfile::tempdir().expect("tempdir");
        fs::write(dir.path().join("b.txt"), "b1\nb2\n").expect("write");
        fs::write(dir.path().join("a.txt"), "a1\r\na2").expect("write");
        fs::write(dir.path().join(".hidden"), "no\n").expect("write");
        fs::create_dir(dir.path().join("sub")).expect("mkdir");
        fs::write(dir.path().join("sub").join("c.txt"), "no\n").expect("write");
        let source = FileLinesSource::new(dir.path()).expect("source");
        assert_eq!(read_all(&source, 1, 10), vec![vec!["a1", "a2", "b1", "b2"]]);
    }

    #[test]
    fn an_unreadable_input_path_is_an_error_naming_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let missing = dir.path().join("does-not-exist.txt");
        let err = FileLinesSource::new(&missing).expect_err("missing input");
        let message = err.to_string();
        assert!(
            message.contains(&format!("cannot read input '{}'", missing.display())),
            "{message}"
        );
        assert!(message.contains("No such file or directory"), "{message}");
        assert!(!err.retry_may_help());
    }

    #[test]
    fn check_notices_an_input_removed_after_listing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("in.txt");
        fs::write(&path, "x\n").expect("write");
        let source = FileLinesSource::new(dir.path()).expect("source");
        source.check().expect("readable");
        fs::remove_file(&path).expect("remove");
        let err = source.check().expect_err("removed");
        assert!(err.to_string().contains("in.txt"), "{err}");
    }

    #[test]
    fn a_line_that_is_not_utf8_is_an_error_naming_the_file_and_offset() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("bad.txt");
        fs::write(&path, b"good\nab\xffcd\n").expect("write");
        let source = FileLinesSource::new(&path).expect("source");
        let mut reader = source.reader(0, 1).expect("reader");
        let mut out = Vec::new();
        let err = reader.poll(&mut out, 10).expect_err("bad utf-8");
        let message = err.to_string();
        assert!(
            message.contains("bad.txt") && message.contains("byte offset 7"),
            "{message}"
        );
        assert_eq!(out, vec!["good"]);
    }

    #[test]
    fn the_reader_tracks_its_file_and_offset() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("in.txt");
        fs::write(&path, "one\ntwo\nthree\n").expect("write");
        let source = FileLinesSource::new(&path).expect("source");
        let mut reader = source.reader(0, 1).expect("reader");
        assert_eq!(reader.position(), None);
        let mut out = Vec::new();
        assert_eq!(reader.poll(&mut out, 1).expect("poll"), SourcePoll::More);
        assert_eq!(reader.position(), Some((path.as_path(), 4)));
        assert_eq!(reader.poll(&mut out, 1).expect("poll"), SourcePoll::More);
        assert_eq!(reader.position(), Some((path.as_path(), 8)));
        assert_eq!(drain(&mut reader, 10), vec!["three"]);
        assert_eq!(reader.position(), None);
    }

    #[test]
    fn an_empty_directory_finishes_at_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        let source = FileLinesSource::new(dir.path()).expect("source");
        let mut reader = source.reader(0, 2).expect("reader");
        assert_eq!(
            reader.poll(&mut Vec::new(), 10).expect("poll"),
            SourcePoll::Finished
        );
    }
}
