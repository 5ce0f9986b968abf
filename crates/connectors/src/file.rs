//! The lines of a file or of a directory of files, read in parallel byte-range splits.
//!
//! See [`FileLinesSource`] for how the input is divided among subtasks and how a reader's
//! position is saved and restored.

use crate::{position, subtask_of, ConnectorError};
use serde::{Deserialize, Serialize};
use std::fs::{self, File};
use std::io::{self, BufReader, Read, Seek, SeekFrom};
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

/// What identifies a listing: the number of files and a stable hash over every file's path and
/// length, so a restore notices files added, removed or resized since the checkpoint.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct ListingDigest {
    files: u64,
    hash: u64,
}

impl ListingDigest {
    fn of(files: &[InputFile]) -> Self {
        let mut bytes = Vec::new();
        for file in files {
            bytes.extend_from_slice(file.path.to_string_lossy().as_bytes());
            bytes.push(0);
            bytes.extend_from_slice(&file.len.to_le_bytes());
        }
        Self {
            files: files.len() as u64,
            hash: weir_types::stable_hash64(&bytes),
        }
    }
}

/// A byte range `start..end` of input file number `file` (an index into the listing).
#[derive(Copy, Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
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
///
/// **Replayable.** A reader's position ([`FileLinesReader::saved_position`]) is the split it is
/// in, the file's path and the byte offset of the next unread line, together with what its
/// splits were planned from (subtask, parallelism, smallest split, and a digest of the listing:
/// every file's path and length). [`FileLinesSource::resume`] continues at that offset, so
/// lines before the snapshot plus lines after the restore are the input read once. A restore
/// is refused, with an error naming the file, when the file being read is missing or changed
/// length, when the directory listing changed (files added, removed or resized), or when the
/// offset lies outside the split or not at the start of a line. Only lengths are compared: a
/// file rewritten in place with the same length is not noticed unless a saved offset no
/// longer starts a line.
#[derive(Clone, Debug)]
pub struct FileLinesSource {
    path: PathBuf,
    files: Arc<Vec<InputFile>>,
    listing: ListingDigest,
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
            listing: ListingDigest::of(&files),
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

    /// The reader of subtask `subtask` of `parallelism`, at the start of its splits.
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
            plan: SplitPlan {
                subtask,
                parallelism,
                min_split: self.min_split,
                listing: self.listing,
            },
            splits,
            next_split: 0,
            current: None,
            line: Vec::new(),
            explicit: false,
        })
    }

    /// The reader of subtask `subtask` of `parallelism`, resumed at `position` (what
    /// [`FileLinesReader::saved_position`] returned): its first line is the one after the last
    /// line returned before the snapshot.
    ///
    /// Refused — never silently re-reading or skipping input — when the position was taken
    /// with another subtask, parallelism or smallest split, when the file being read is missing
    /// or changed length, when the listing changed, or when the offset does not fit the split
    /// or does not start a line. Errors name the file (or the input directory).
    pub fn resume(
        &self,
        subtask: u32,
        parallelism: u32,
        position: &[u8],
    ) -> Result<FileLinesReader, ConnectorError> {
        let mut reader = self.reader(subtask, parallelism)?;
        let (saved, explicit_splits) = if position.first() == Some(&FILE_RESCALED_VERSION) {
            let r: RescaledPosition = position::decode("file", FILE_RESCALED_VERSION, position)?;
            (
                FilePosition {
                    plan: r.plan,
                    cursor: r.cursor,
                },
                Some(r.splits),
            )
        } else {
            let p: FilePosition = position::decode("file", FILE_POSITION_VERSION, position)?;
            (p, None)
        };
        let bad = |reason: String| ConnectorError::BadPosition {
            connector: "file",
            reason,
        };

        // 1. The split plan: same subtask, parallelism and smallest split.
        let (then, now) = (saved.plan, reader.plan);
        let mut differences = Vec::new();
        for (what, was, is) in [
            ("subtask", u64::from(then.subtask), u64::from(now.subtask)),
            (
                "parallelism",
                u64::from(then.parallelism),
                u64::from(now.parallelism),
            ),
            ("smallest split", then.min_split, now.min_split),
        ] {
            if was != is {
                differences.push(format!("{what} was {was}, is now {is}"));
            }
        }
        if !differences.is_empty() {
            return Err(bad(format!(
                "it was taken by a differently configured file source: {}",
                differences.join("; ")
            )));
        }

        // 2. The file being read: still listed, with the same length.
        if let Cursor::InSplit { path, len, .. } = &saved.cursor {
            let listed = self
                .files
                .iter()
                .find(|f| f.path.to_string_lossy() == path.as_str());
            let path = PathBuf::from(path);
            match listed {
                None => {
                    fs::metadata(&path).map_err(|cause| unreadable(&path, cause))?;
                    return Err(ConnectorError::InputChanged {
                        reason: format!("it is no longer listed under '{}'", self.path.display()),
                        path,
                    });
                }
                Some(file) if file.len != *len => {
                    return Err(ConnectorError::InputChanged {
                        reason: format!("it had {len} bytes, now {}", file.len),
                        path,
                    });
                }
                Some(_) => {}
            }
        }

        // 3. The whole listing, which every subtask's splits are planned from.
        if then.listing != now.listing {
            return Err(ConnectorError::InputChanged {
                path: self.path.clone(),
                reason: format!(
                    "its files were added, removed or resized ({} files then, {} now)",
                    then.listing.files, now.listing.files
                ),
            });
        }

        // A rescaled reader's splits come with its position: each must lie within its file.
        if let Some(splits) = explicit_splits {
            for split in &splits {
                let fits = self
                    .files
                    .get(split.file)
                    .is_some_and(|f| split.start <= split.end && split.end <= f.len);
                if !fits {
                    return Err(bad(format!(
                        "split {}..{} of file {} does not fit the listing",
                        split.start, split.end, split.file
                    )));
                }
            }
            reader.splits = splits;
            reader.explicit = true;
        }

        // 4. The cursor within this reader's splits.
        match saved.cursor {
            Cursor::Between { next_split } => {
                let next_split = next_split as usize;
                if next_split > reader.splits.len() {
                    return Err(bad(format!(
                        "split {next_split} does not exist; subtask {subtask} has {} splits",
                        reader.splits.len()
                    )));
                }
                reader.next_split = next_split;
            }
            Cursor::InSplit {
                split: index,
                path,
                len,
                offset,
            } => {
                let index = index as usize;
                let Some(&split) = reader.splits.get(index) else {
                    return Err(bad(format!(
                        "split {index} of '{path}' does not exist; subtask {subtask} has {} splits",
                        reader.splits.len()
                    )));
                };
                let file = &self.files[split.file];
                if file.path.to_string_lossy() != path.as_str() {
                    return Err(bad(format!(
                        "split {index} reads '{}', not '{path}'",
                        file.path.display()
                    )));
                }
                if offset < split.start || offset > len {
                    return Err(bad(format!(
                        "byte offset {offset} of '{path}' lies outside split {}..{} \
                         (the file has {len} bytes)",
                        split.start, split.end
                    )));
                }
                reader.current = Some(reader.open_at(split, offset)?);
                reader.next_split = index + 1;
            }
        }
        tracing::debug!(
            path = %self.path.display(),
            subtask,
            position = ?reader.position(),
            "file reader resumed"
        );
        Ok(reader)
    }
}

impl FileLinesSource {
    /// The reader of subtask `subtask` of `parallelism` restored from `positions`, every old
    /// subtask's position taken at `old_parallelism` (index, bytes): the byte ranges the old
    /// readers had not read (each from the start of its next line) are dealt out in order,
    /// range `i` to subtask `i mod parallelism`, so the new subtasks together read every
    /// unread line exactly once. Each old position is checked as [`Self::resume`] checks it; a
    /// missing or repeated old subtask is refused.
    pub fn rescaled(
        &self,
        subtask: u32,
        parallelism: u32,
        old_parallelism: u32,
        positions: &[(u32, Vec<u8>)],
    ) -> Result<FileLinesReader, ConnectorError> {
        let mut reader = self.reader(subtask, parallelism)?;
        position::check_rescaled("file", old_parallelism, positions)?;
        let mut remaining = Vec::new();
        for (old, bytes) in positions {
            remaining.extend(self.resume(*old, old_parallelism, bytes)?.remaining());
        }
        reader.splits = remaining
            .into_iter()
            .enumerate()
            .filter(|(i, _)| *i as u64 % u64::from(parallelism) == u64::from(subtask))
            .map(|(_, split)| split)
            .collect();
        reader.explicit = true;
        Ok(reader)
    }
}

/// The format version of [`FilePosition`] bytes.
const FILE_POSITION_VERSION: u8 = 1;

/// The format version of [`RescaledPosition`] bytes.
const FILE_RESCALED_VERSION: u8 = 2;

/// A rescaled reader's saved position: its splits are saved with it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct RescaledPosition {
    plan: SplitPlan,
    splits: Vec<FileSplit>,
    cursor: Cursor,
}

/// What a reader's splits were planned from.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct SplitPlan {
    subtask: u32,
    parallelism: u32,
    min_split: u64,
    listing: ListingDigest,
}

/// A file reader's saved position.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct FilePosition {
    plan: SplitPlan,
    cursor: Cursor,
}

/// Where in its splits a reader is.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
enum Cursor {
    /// No split is open; `next_split` (an index into the reader's splits; their count once
    /// all are read) is the next to open, from its start.
    Between { next_split: u32 },
    /// Split `split` is open, reading `path` (of `len` bytes when listed); the next line
    /// starts at byte `offset`.
    InSplit {
        split: u32,
        path: String,
        len: u64,
        offset: u64,
    },
}

impl Source<String> for FileLinesSource {
    fn name(&self) -> String {
        "file".to_string()
    }

    fn create_reader(
        &self,
        ctx: &SourceContext,
        restored: Option<&[u8]>,
    ) -> Result<Box<dyn SourceReader<String>>, UserError> {
        let (subtask, parallelism) = subtask_of(ctx)?;
        Ok(Box::new(match restored {
            None => self.reader(subtask, parallelism)?,
            Some(position) => self.resume(subtask, parallelism, position)?,
        }))
    }

    fn create_rescaled_reader(
        &self,
        ctx: &SourceContext,
        old_parallelism: u32,
        positions: &[(u32, Vec<u8>)],
    ) -> Result<Box<dyn SourceReader<String>>, UserError> {
        let (subtask, parallelism) = subtask_of(ctx)?;
        Ok(Box::new(self.rescaled(
            subtask,
            parallelism,
            old_parallelism,
            positions,
        )?))
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
    plan: SplitPlan,
    splits: Vec<FileSplit>,
    next_split: usize,
    current: Option<OpenSplit>,
    /// Reused line buffer.
    line: Vec<u8>,
    /// The splits were handed over by a rescale ([`FileLinesSource::rescaled`]) rather than
    /// planned from the parallelism: the position saves them.
    explicit: bool,
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

    /// The saved form of the reader's position (versioned bytes), from which
    /// [`FileLinesSource::resume`] continues with the next line.
    pub fn saved_position(&self) -> Vec<u8> {
        let cursor = match &self.current {
            Some(open) => {
                let file = &self.files[open.split.file];
                Cursor::InSplit {
                    // The open split is the one before `next_split`.
                    split: (self.next_split - 1) as u32,
                    path: file.path.to_string_lossy().into_owned(),
                    len: file.len,
                    offset: open.offset,
                }
            }
            None => Cursor::Between {
                next_split: self.next_split as u32,
            },
        };
        if self.explicit {
            let saved = RescaledPosition {
                plan: self.plan,
                splits: self.splits.clone(),
                cursor,
            };
            return position::encode(FILE_RESCALED_VERSION, &saved);
        }
        let saved = FilePosition {
            plan: self.plan,
            cursor,
        };
        position::encode(FILE_POSITION_VERSION, &saved)
    }

    /// The byte ranges whose lines this reader has not returned yet: the rest of the open
    /// split (from the next line) and every split after it.
    fn remaining(&self) -> Vec<FileSplit> {
        let mut out = Vec::new();
        if let Some(open) = &self.current {
            if open.offset < open.split.end {
                out.push(FileSplit {
                    start: open.offset,
                    ..open.split
                });
            }
        }
        out.extend_from_slice(&self.splits[self.next_split.min(self.splits.len())..]);
        out
    }

    /// Opens `split` at `offset`, a saved position: checks that a line starts there (the byte
    /// before is `\n`, or it is the start or the end of the file).
    fn open_at(&self, split: FileSplit, offset: u64) -> Result<OpenSplit, ConnectorError> {
        let input = &self.files[split.file];
        let path = &input.path;
        let file = File::open(path).map_err(|cause| unreadable(path, cause))?;
        let mut reader = BufReader::with_capacity(READ_BUFFER_BYTES, file);
        if offset > 0 {
            reader
                .seek(SeekFrom::Start(offset - 1))
                .map_err(|cause| unreadable(path, cause))?;
            let mut before = [0u8];
            reader.read_exact(&mut before).map_err(|cause| {
                if cause.kind() == io::ErrorKind::UnexpectedEof {
                    ConnectorError::InputChanged {
                        path: path.clone(),
                        reason: format!("it is now shorter than byte offset {offset}"),
                    }
                } else {
                    unreadable(path, cause)
                }
            })?;
            if before[0] != b'\n' && offset != input.len {
                return Err(ConnectorError::InputChanged {
                    path: path.clone(),
                    reason: format!("byte offset {offset} no longer starts a line"),
                });
            }
        }
        Ok(OpenSplit {
            split,
            reader,
            offset,
        })
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
            // Skipped in bounded pieces: a file without newlines never fills the memory.
            let mut n = 0u64;
            loop {
                let mut skipped = Vec::new();
                let read =
                    crate::read_line_bounded(&mut reader, &mut skipped, crate::MAX_LINE_BYTES)
                        .map_err(|cause| unreadable(path, cause))?;
                n += read as u64;
                if read == 0 || skipped.last() == Some(&b'\n') {
                    break;
                }
            }
            offset = split.start - 1 + n;
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
            let n =
                crate::read_line_bounded(&mut open.reader, &mut self.line, crate::MAX_LINE_BYTES)
                    .map_err(|cause| unreadable(path, cause))?;
            if crate::overran(&self.line, crate::MAX_LINE_BYTES) {
                return Err(ConnectorError::LineTooLong {
                    source_name: path.display().to_string(),
                    offset: open.offset,
                    max: crate::MAX_LINE_BYTES,
                }
                .into());
            }
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

    fn snapshot_position(&mut self) -> Result<Option<Vec<u8>>, UserError> {
        Ok(Some(self.saved_position()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::{ctx, drain, read_with_restores};
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

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]

        /// Each subtask: lines before each snapshot plus the restored reader's lines equal an
        /// uninterrupted run (lines read after a snapshot are lost, as in a failure); over all
        /// subtasks every line comes exactly once.
        #[test]
        fn a_restored_file_reader_reads_every_line_exactly_once(
            files in prop::collection::vec(file_strategy(), 1..4),
            parallelism in 1u32..5,
            min_split in 1u64..48,
            sizes in prop::collection::vec(1usize..6, 1..6),
            failures in prop::collection::vec((0usize..8, 0usize..3), 0..6),
        ) {
            let dir = tempfile::tempdir().expect("tempdir");
            let mut expected = Vec::new();
            for (i, content) in files.iter().enumerate() {
                fs::write(dir.path().join(format!("in-{i:02}.txt")), content).expect("write");
                expected.extend(reference_lines(content));
            }
            let source = FileLinesSource::new(dir.path()).expect("source").min_split_bytes(min_split);
            let mut got = Vec::new();
            for subtask in 0..parallelism {
                let context = ctx("file", subtask, parallelism);
                let open = |restored: Option<&[u8]>| {
                    source.create_reader(&context, restored).expect("reader")
                };
                let uninterrupted = read_with_restores(open, &sizes, &[], usize::MAX);
                let restored = read_with_restores(open, &sizes, &failures, usize::MAX);
                prop_assert_eq!(&restored, &uninterrupted, "subtask {}", subtask);
                got.extend(restored);
            }
            got.sort();
            expected.sort();
            prop_assert_eq!(got, expected);
        }
    }

    /// A reader of `path` (one subtask) that has returned `lines` lines, and its position.
    fn position_after(source: &FileLinesSource, lines: usize) -> Vec<u8> {
        let mut reader = source.reader(0, 1).expect("reader");
        let mut out = Vec::new();
        reader.poll(&mut out, lines).expect("poll");
        assert_eq!(out.len(), lines);
        reader.saved_position()
    }

    #[test]
    fn a_line_longer_than_the_bound_fails_the_source_naming_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("in.txt");
        let mut text = b"ok\n".to_vec();
        text.extend(std::iter::repeat_n(b'x', crate::MAX_LINE_BYTES + 10));
        fs::write(&path, &text).expect("write");
        let source = FileLinesSource::new(&path).expect("source");
        let mut reader = source.reader(0, 1).expect("reader");
        let mut out = Vec::new();
        let err = reader.poll(&mut out, 10).expect_err("too long");
        assert_eq!(out, vec!["ok"]);
        let msg = err.to_string();
        assert!(
            msg.contains("in.txt")
                && msg.contains("at byte offset 3")
                && msg.contains("longer than"),
            "{msg}"
        );
    }

    #[test]
    fn a_file_reader_resumes_at_the_saved_offset() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("in.txt");
        fs::write(&path, "one\ntwo\nthree\n").expect("write");
        let source = FileLinesSource::new(&path).expect("source");
        let mut restored = source
            .resume(0, 1, &position_after(&source, 1))
            .expect("restore");
        assert_eq!(restored.position(), Some((path.as_path(), 4)));
        assert_eq!(drain(&mut restored, 10), vec!["two", "three"]);
        // A position taken at the end restores a finished reader.
        let mut at_end = source.reader(0, 1).expect("reader");
        drain(&mut at_end, 10);
        let mut restored = source
            .resume(0, 1, &at_end.saved_position())
            .expect("restore");
        assert!(drain(&mut restored, 10).is_empty());
    }

    #[test]
    fn a_restore_after_the_file_being_read_grew_is_refused_naming_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("a.txt");
        fs::write(&path, "a1\na2\n").expect("write");
        fs::write(dir.path().join("b.txt"), "b1\n").expect("write");
        let position = position_after(&FileLinesSource::new(dir.path()).expect("source"), 1);
        fs::write(&path, "a1\na2\na3\n").expect("append");
        let err = FileLinesSource::new(dir.path())
            .expect("source")
            .resume(0, 1, &position)
            .err()
            .expect("changed file");
        let message = err.to_string();
        assert!(
            matches!(err, ConnectorError::InputChanged { .. }),
            "{message}"
        );
        assert!(
            message.contains(&format!("'{}'", path.display()))
                && message.contains("had 6 bytes, now 9"),
            "{message}"
        );
    }

    #[test]
    fn a_restore_after_the_file_being_read_was_removed_is_refused_naming_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("a.txt");
        fs::write(&path, "a1\na2\n").expect("write");
        fs::write(dir.path().join("b.txt"), "b1\n").expect("write");
        let position = position_after(&FileLinesSource::new(dir.path()).expect("source"), 1);
        fs::remove_file(&path).expect("remove");
        let err = FileLinesSource::new(dir.path())
            .expect("source")
            .resume(0, 1, &position)
            .err()
            .expect("missing file");
        assert!(
            err.to_string()
                .contains(&format!("cannot read input '{}'", path.display())),
            "{err}"
        );
    }

    #[test]
    fn a_restore_after_files_were_added_is_refused_naming_the_directory() {
        let dir = tempfile::tempdir().expect("tempdir");
        fs::write(dir.path().join("a.txt"), "a1\na2\n").expect("write");
        let position = position_after(&FileLinesSource::new(dir.path()).expect("source"), 1);
        fs::write(dir.path().join("c.txt"), "c1\n").expect("write");
        let err = FileLinesSource::new(dir.path())
            .expect("source")
            .resume(0, 1, &position)
            .err()
            .expect("changed listing");
        let message = err.to_string();
        assert!(
            message.contains(&format!("input '{}' changed", dir.path().display()))
                && message.contains("1 files then, 2 now"),
            "{message}"
        );
    }

    #[test]
    fn an_offset_outside_the_split_is_refused_naming_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("in.txt");
        fs::write(&path, "one\ntwo\n").expect("write");
        let source = FileLinesSource::new(&path).expect("source");
        let saved = position_after(&source, 1);
        let mut position: FilePosition =
            position::decode("file", FILE_POSITION_VERSION, &saved).expect("decode");
        let Cursor::InSplit { offset, .. } = &mut position.cursor else {
            panic!("a reader that returned a line is in a split");
        };
        *offset = 50;
        let err = source
            .resume(0, 1, &position::encode(FILE_POSITION_VERSION, &position))
            .err()
            .expect("offset beyond the file");
        let message = err.to_string();
        assert!(
            message.contains(&format!("byte offset 50 of '{}'", path.display()))
                && message.contains("outside split 0..8"),
            "{message}"
        );
    }

    #[test]
    fn a_saved_offset_that_no_longer_starts_a_line_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("in.txt");
        fs::write(&path, "one\ntwo\n").expect("write");
        let position = position_after(&FileLinesSource::new(&path).expect("source"), 1);
        fs::write(&path, "on\netwo\n").expect("rewrite, same length");
        let err = FileLinesSource::new(&path)
            .expect("source")
            .resume(0, 1, &position)
            .err()
            .expect("rewritten file");
        let message = err.to_string();
        assert!(
            message.contains("in.txt") && message.contains("byte offset 4 no longer starts a line"),
            "{message}"
        );
    }

    #[test]
    fn a_position_for_another_split_plan_or_garbage_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("in.txt");
        fs::write(&path, "one\ntwo\n").expect("write");
        let source = FileLinesSource::new(&path).expect("source");
        let position = position_after(&source, 1);
        let err = source.resume(0, 2, &position).err().expect("parallelism");
        assert!(
            err.to_string().contains("parallelism was 1, is now 2"),
            "{err}"
        );
        let err = source
            .clone()
            .min_split_bytes(3)
            .resume(0, 1, &position)
            .err()
            .expect("smallest split");
        assert!(err.to_string().contains("smallest split was"), "{err}");
        for bad in [
            &b""[..],
            &b"\x07garbage"[..],
            &position[..position.len() - 2],
        ] {
            let err = source.resume(0, 1, bad).err().expect("garbage");
            assert!(
                matches!(
                    err,
                    ConnectorError::BadPosition {
                        connector: "file",
                        ..
                    }
                ),
                "{err}"
            );
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

    /// Reads `steps[k]` lines with each of `old` readers, rescales to `new`, reads a little,
    /// rescales back to `old` and drains: every line exactly once.
    fn lines_across_rescales(
        source: &FileLinesSource,
        old: u32,
        new: u32,
        steps: &[usize],
    ) -> Vec<String> {
        let mut seen = Vec::new();
        let mut positions = Vec::new();
        for k in 0..old {
            let mut r = source.reader(k, old).expect("reader");
            let mut out = Vec::new();
            let n = steps.get(k as usize).copied().unwrap_or(2);
            if n > 0 {
                r.poll(&mut out, n).expect("poll");
            }
            seen.extend(out);
            positions.push((k, r.saved_position()));
        }
        let mut middle = Vec::new();
        for j in 0..new {
            let mut r = source.rescaled(j, new, old, &positions).expect("rescaled");
            let mut out = Vec::new();
            r.poll(&mut out, 3).expect("poll");
            seen.extend(out);
            middle.push((j, r.saved_position()));
        }
        for k in 0..old {
            let mut r = source
                .rescaled(k, old, new, &middle)
                .expect("rescaled back");
            seen.extend(crate::test_util::drain(&mut r, 4));
        }
        seen.sort();
        seen
    }

    proptest::proptest! {
        #[test]
        fn every_line_is_read_exactly_once_across_any_rescale(
            lines in 0usize..120,
            old in 1u32..5,
            new in 1u32..5,
            steps in proptest::collection::vec(0usize..30, 5),
            files in 1usize..3,
        ) {
            let dir = tempfile::tempdir().expect("tempdir");
            let mut expected = Vec::new();
            for f in 0..files {
                let text: String = (0..lines).map(|i| format!("f{f}-line-{i}\n")).collect();
                expected.extend((0..lines).map(|i| format!("f{f}-line-{i}")));
                fs::write(dir.path().join(format!("in-{f}.txt")), text).expect("write");
            }
            expected.sort();
            let source = FileLinesSource::new(dir.path()).expect("source").min_split_bytes(16);
            let seen = lines_across_rescales(&source, old, new, &steps);
            proptest::prop_assert_eq!(seen, expected);
        }
    }
}
