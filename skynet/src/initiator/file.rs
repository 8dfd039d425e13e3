//! The file initiator: a JSONL file of requests in, a JSONL file of answers out.
//!
//! Each input line is a request as the TCP initiator takes it (`{"route": .., "input": ..,
//! "id": ..}`, `route` optional with a default); blank lines are skipped. Each answer is one
//! output line naming its input line (1-based): `{"line": 3, "id": .., "output": ..}` or
//! `{"line": 3, "id": .., "error": {..}}`, in the order the answers come (several requests run
//! at once). Every answer is flushed to disk (fdatasync) before the next is written.
//!
//! **Checks first.** Both files must be regular files (a FIFO, a device or a directory is
//! refused), and not the same file (by path and by device and inode, so a symbolic or hard
//! link is caught too). The input is opened first: a run whose input is missing leaves no
//! output behind, and the output file is created only when the first answer is written. An
//! output that exists is read through, one line at a time, before anything is written or cut:
//! if any complete line is not an answer (a JSON object with a positive `"line"` and an
//! `"output"` or an `"error"`), or a line is longer than the answer limit, the run is refused
//! and the file is left as it was.
//!
//! **Resuming.** Started again on the same files after a crash, the initiator reads the output
//! file, cuts off a torn last answer (the process died while writing it), and skips every input
//! line that already has an answer: a finished line is never run again. A line that was running
//! when the process died has no answer yet and runs again, so the file as a whole is processed
//! at least once per line and answered exactly once per line. Only the set of answered line
//! numbers is kept in memory, about a bit per line, not the file.
//!
//! **A growing input.** An input line is run only once its newline has been written. A last
//! line without one (a file still being written, or whose writer died) is left alone and
//! counted in [`FileSummary::unterminated`]; once it is completed, the next run answers it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use futures_util::StreamExt as _;
use serde_json::Value;
use tokio::io::{AsyncBufRead, AsyncBufReadExt as _, AsyncWriteExt as _, BufReader};

use serde_json::value::RawValue;

use super::tcp::{null, prepare};
use super::{Failure, Refusal, RouteCaller, answer_line};

/// Read buffer of both files.
const READ_BUFFER: usize = 64 << 10;

/// Settings of a file run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileConfig {
    /// The route of requests that name none.
    pub default_route: Option<String>,
    /// Requests that run at once. Default 16.
    pub concurrency: usize,
    /// Longest input line, in bytes. Default 1 MiB.
    pub max_line: usize,
    /// Longest answer line, in bytes. Default 32 MiB (twice the largest RPC frame by default).
    /// A longer output is answered with an error instead, and an output file with a longer
    /// line is not an answers file.
    pub max_answer: usize,
}

impl Default for FileConfig {
    fn default() -> Self {
        Self {
            default_route: None,
            concurrency: 16,
            max_line: 1 << 20,
            max_answer: 32 << 20,
        }
    }
}

/// What a file run did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct FileSummary {
    /// Requests answered by this run.
    pub answered: u64,
    /// Of those, how many failed (their answer is an error).
    pub failed: u64,
    /// Requests skipped because an earlier run had answered them.
    pub already_done: u64,
    /// A last input line without a newline (0 or 1): it may still be being written, so it was
    /// not run; a later run answers it once it is complete.
    pub unterminated: u64,
}

/// Why a file run stopped, or did not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FileError {
    /// Reading, writing or opening a file failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// What failed.
        source: std::io::Error,
    },
    /// The input or the output is not a regular file (a FIFO, a device, a directory, ...).
    #[error("{} is a {kind}, not a regular file", path.display())]
    NotAFile {
        /// The file.
        path: PathBuf,
        /// What it is instead.
        kind: &'static str,
    },
    /// The input and the output are the same file: answers would be appended to the
    /// requests.
    #[error(
        "the input {} and the output {} are the same file; answers go to a file of their own",
        input.display(),
        output.display()
    )]
    SameFile {
        /// The input, as given.
        input: PathBuf,
        /// The output, as given.
        output: PathBuf,
    },
    /// The output file holds a line that is not an answer of this format. Nothing was written
    /// to it.
    #[error(
        "{} is not an answers file (line {line}: {reason}); it was left as it is",
        path.display()
    )]
    BadOutput {
        /// The output file.
        path: PathBuf,
        /// Its line number.
        line: u64,
        /// What is wrong.
        reason: String,
    },
    /// The output file changed while it was being checked (another process writing to it, or
    /// replacing it). Nothing was cut.
    #[error("{} changed while it was being checked; is another run writing to it?", path.display())]
    OutputChanged {
        /// The output file.
        path: PathBuf,
    },
}

/// Runs every unanswered request of `input` and appends the answers to `output`:
/// [`FileJob::open`], then [`FileJob::run`].
pub async fn run_file(
    caller: &RouteCaller,
    input: &Path,
    output: &Path,
    config: &FileConfig,
) -> Result<FileSummary, FileError> {
    FileJob::open(input, output, config)
        .await?
        .run(caller)
        .await
}

/// A file run whose files are checked and open: the input, the output (if it exists) and the
/// input lines it already answers.
#[derive(Debug)]
pub struct FileJob {
    input_path: PathBuf,
    input: tokio::fs::File,
    output_path: PathBuf,
    /// `None` while the output file does not exist: it is created by the first answer.
    output: Option<tokio::fs::File>,
    /// The output ends with a complete answer that lacks its newline: write one first.
    needs_newline: bool,
    done: LineSet,
    config: FileConfig,
}

impl FileJob {
    /// Opens and checks both files (see the module documentation). The only change it may
    /// make is cutting a torn last answer off the output, and only once every other line of
    /// the output has been read and found to be an answer.
    pub async fn open(input: &Path, output: &Path, config: &FileConfig) -> Result<Self, FileError> {
        let io = |path: &Path| {
            let path = path.to_owned();
            move |source| FileError::Io { path, source }
        };
        // The input first: without it, nothing else is touched.
        let checked = regular_metadata(input).await?;
        let input_file = tokio::fs::File::open(input).await.map_err(io(input))?;
        let input_meta = input_file.metadata().await.map_err(io(input))?;
        is_regular(input, &input_meta)?;
        if !same_inode(&checked, &input_meta) {
            return Err(FileError::Io {
                path: input.to_owned(),
                source: std::io::Error::other("the file was replaced while it was being opened"),
            });
        }

        let mut job = Self {
            input_path: input.to_owned(),
            input: input_file,
            output_path: output.to_owned(),
            output: None,
            needs_newline: false,
            done: LineSet::default(),
            config: config.clone(),
        };
        let output_meta = match tokio::fs::metadata(output).await {
            Ok(meta) => meta,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(job),
            Err(source) => return Err(io(output)(source)),
        };
        is_regular(output, &output_meta)?;
        let same_path = tokio::fs::canonicalize(input).await.map_err(io(input))?
            == tokio::fs::canonicalize(output).await.map_err(io(output))?;
        if same_path || same_inode(&input_meta, &output_meta) {
            return Err(FileError::SameFile {
                input: input.to_owned(),
                output: output.to_owned(),
            });
        }
        let mut file = tokio::fs::OpenOptions::new()
            .read(true)
            .append(true)
            .open(output)
            .await
            .map_err(io(output))?;
        let opened = file.metadata().await.map_err(io(output))?;
        is_regular(output, &opened)?;
        let changed = || FileError::OutputChanged {
            path: output.to_owned(),
        };
        if !same_inode(&output_meta, &opened) {
            return Err(changed());
        }

        let scan = scan_answers(
            &mut BufReader::with_capacity(READ_BUFFER, &mut file),
            config.max_answer,
        )
        .await
        .map_err(|e| match e {
            ScanError::Io(source) => io(output)(source),
            ScanError::Bad { line, reason } => FileError::BadOutput {
                path: output.to_owned(),
                line,
                reason,
            },
        })?;
        // Every line is an answer: now (and only now) a torn last one may be cut, if nobody
        // wrote to the file since it was read.
        if file.metadata().await.map_err(io(output))?.len() != scan.read {
            return Err(changed());
        }
        match scan.tail {
            Tail::None => {}
            Tail::Complete => job.needs_newline = true,
            Tail::Torn => {
                tracing::warn!(
                    path = %output.display(),
                    bytes = scan.read - scan.complete,
                    "cutting off a torn last answer"
                );
                file.set_len(scan.complete).await.map_err(io(output))?;
                file.sync_all().await.map_err(io(output))?;
            }
        }
        job.output = Some(file);
        job.done = scan.done;
        Ok(job)
    }

    /// Runs every unanswered request and appends the answers to the output file.
    pub async fn run(self, caller: &RouteCaller) -> Result<FileSummary, FileError> {
        let Self {
            input_path,
            input,
            output_path,
            mut output,
            mut needs_newline,
            done,
            config,
        } = self;
        let io = |path: &Path| {
            let path = path.to_owned();
            move |source| FileError::Io { path, source }
        };
        let reader = BufReader::with_capacity(READ_BUFFER, input);
        let max_line = config.max_line;
        let works = futures_util::stream::unfold(
            (reader, 0u64, Vec::new()),
            move |(mut reader, mut number, mut buf)| async move {
                let work = next_work(&mut reader, max_line, &mut buf, &mut number).await;
                let work = work.transpose()?;
                Some((work, (reader, number, buf)))
            },
        );
        let (config, done) = (&config, &done);
        let steps = works
            .map(|work| async move {
                Ok(match work? {
                    Work::Run(number, _) if done.contains(number) => Step::AlreadyDone,
                    Work::Refused(number, _) if done.contains(number) => Step::AlreadyDone,
                    Work::Unterminated => Step::Unterminated,
                    Work::Run(number, text) => {
                        let (line, failed) = answer(caller, config, number, text).await;
                        Step::Answer(line, failed)
                    }
                    Work::Refused(number, why) => {
                        let failure = Failure::BadRequest {
                            message: why.to_string(),
                        };
                        Step::Answer(error_line(number, &null(), &failure), true)
                    }
                })
            })
            .buffer_unordered(config.concurrency.max(1));
        tokio::pin!(steps);
        let mut summary = FileSummary::default();
        while let Some(step) = steps.next().await {
            let step: Result<Step, std::io::Error> = step;
            let (line, failed) = match step.map_err(io(&input_path))? {
                Step::AlreadyDone => {
                    summary.already_done += 1;
                    continue;
                }
                Step::Unterminated => {
                    summary.unterminated += 1;
                    continue;
                }
                Step::Answer(line, failed) => (line, failed),
            };
            let out = match &mut output {
                Some(out) => out,
                // The first answer: only now does the output file come to be. `create_new`,
                // since it did not exist when checked: a file that appeared since (or a
                // dangling link) was never read, and is not written to.
                None => output.insert(
                    tokio::fs::OpenOptions::new()
                        .create_new(true)
                        .append(true)
                        .open(&output_path)
                        .await
                        .map_err(io(&output_path))?,
                ),
            };
            let mut bytes = Vec::with_capacity(line.len() + 2);
            if std::mem::take(&mut needs_newline) {
                bytes.push(b'\n');
            }
            bytes.extend_from_slice(line.as_bytes());
            bytes.push(b'\n');
            out.write_all(&bytes).await.map_err(io(&output_path))?;
            out.sync_data().await.map_err(io(&output_path))?;
            summary.answered += 1;
            if failed {
                summary.failed += 1;
            }
        }
        Ok(summary)
    }
}

/// The metadata of `path`, which must be a regular file. Checked before opening: opening a
/// FIFO blocks until it has a writer, and reading a device may never end.
async fn regular_metadata(path: &Path) -> Result<std::fs::Metadata, FileError> {
    let meta = tokio::fs::metadata(path)
        .await
        .map_err(|source| FileError::Io {
            path: path.to_owned(),
            source,
        })?;
    is_regular(path, &meta)?;
    Ok(meta)
}

fn is_regular(path: &Path, meta: &std::fs::Metadata) -> Result<(), FileError> {
    if meta.is_file() {
        return Ok(());
    }
    Err(FileError::NotAFile {
        path: path.to_owned(),
        kind: file_kind(&meta.file_type()),
    })
}

/// What a file that is not a regular file is, in words.
fn file_kind(kind: &std::fs::FileType) -> &'static str {
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt as _;
        if kind.is_fifo() {
            return "FIFO";
        }
        if kind.is_char_device() {
            return "character device";
        }
        if kind.is_block_device() {
            return "block device";
        }
        if kind.is_socket() {
            return "socket";
        }
    }
    if kind.is_dir() {
        "directory"
    } else if kind.is_symlink() {
        "symbolic link"
    } else {
        "special file"
    }
}

/// Whether two metadata describe the same file (device and inode).
#[cfg(unix)]
fn same_inode(a: &std::fs::Metadata, b: &std::fs::Metadata) -> bool {
    use std::os::unix::fs::MetadataExt as _;
    (a.dev(), a.ino()) == (b.dev(), b.ino())
}

/// Without inodes, the canonical paths are the check.
#[cfg(not(unix))]
fn same_inode(_: &std::fs::Metadata, _: &std::fs::Metadata) -> bool {
    false
}

/// What to do with one input line.
#[derive(Debug, PartialEq, Eq)]
enum Work {
    /// Run it: line number and text.
    Run(u64, String),
    /// Answer that it cannot be read (too long, not UTF-8).
    Refused(u64, Refusal),
    /// A last line without a newline: left for a later run.
    Unterminated,
}

/// What became of one input line.
enum Step {
    AlreadyDone,
    Unterminated,
    /// The answer line, and whether it is an error.
    Answer(String, bool),
}

/// The next input line that is not blank, or `None` at the end of the input. `number` is the
/// number of the last line read, and is counted on.
async fn next_work<R>(
    reader: &mut R,
    max: usize,
    buf: &mut Vec<u8>,
    number: &mut u64,
) -> std::io::Result<Option<Work>>
where
    R: AsyncBufRead + Unpin,
{
    loop {
        *number += 1;
        let (end, refused) = match read_line(reader, max, buf).await? {
            Read::End => return Ok(None),
            Read::Line(end) => (end, None),
            Read::TooLong => (skip_line(reader).await?, Some(Refusal::TooLong { max })),
        };
        let blank = refused.is_none() && buf.iter().all(u8::is_ascii_whitespace);
        if blank {
            continue;
        }
        if end == End::Eof {
            // Not looked at: it may be half written.
            return Ok(Some(Work::Unterminated));
        }
        if let Some(why) = refused {
            return Ok(Some(Work::Refused(*number, why)));
        }
        if buf.last() == Some(&b'\r') {
            buf.pop();
        }
        return Ok(Some(match String::from_utf8(std::mem::take(buf)) {
            Ok(text) => Work::Run(*number, text),
            Err(_) => Work::Refused(*number, Refusal::NotUtf8),
        }));
    }
}

/// Runs one request; returns its answer line and whether it failed.
async fn answer(
    caller: &RouteCaller,
    config: &FileConfig,
    number: u64,
    text: String,
) -> (String, bool) {
    let (id, run) = match prepare(&text, config.default_route.as_deref()) {
        Ok(prepared) => prepared,
        Err((id, failure)) => return (error_line(number, &id, &failure), true),
    };
    // The router's request is a copy of the input: the line itself is not needed any more.
    drop(text);
    let route = run.route().to_owned();
    match caller.run_prepared(run).await {
        Ok(output) => output_line(number, &id, &route, &output, config.max_answer),
        Err(failure) => (error_line(number, &id, &failure), true),
    }
}

/// The answer line of an output; an error answer instead if it would be longer than `max`
/// bytes, since the next run could not read it back. Returns the line and whether it is an
/// error.
fn output_line(
    number: u64,
    id: &RawValue,
    route: &str,
    output: &Value,
    max: usize,
) -> (String, bool) {
    let line = answer_line(Some(number), id, Ok(output));
    if line.len() <= max {
        return (line, false);
    }
    let failure = Failure::Internal {
        route: route.to_owned(),
        message: format!(
            "the answer is {} bytes, more than the file initiator's limit of {max}",
            line.len()
        ),
    };
    let line = error_line(number, id, &failure);
    if line.len() <= max {
        return (line, true);
    }
    (error_line(number, &null(), &failure), true)
}

/// `{"line":N,"id":..,"error":{..}}`: the line number comes first, so a torn answer is
/// recognised as one by its first bytes ([`ANSWER_START`]).
fn error_line(number: u64, id: &RawValue, failure: &Failure) -> String {
    answer_line(Some(number), id, Err(failure))
}

/// How every answer line this initiator writes begins.
const ANSWER_START: &str = "{\"line\":";

/// How a line ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    /// With a newline: the line is complete.
    Newline,
    /// At the end of the file, without a newline: it may still be being written.
    Eof,
}

/// One line read by [`read_line`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Read {
    /// Nothing was left to read.
    End,
    /// A line, in the buffer without its newline.
    Line(End),
    /// The line is longer than the limit; it is read only up to the limit.
    TooLong,
}

/// Reads one line of at most `max` bytes into `buf` (cleared first). Never holds more than
/// `max` bytes plus a read buffer, whatever the line's length.
async fn read_line<R>(reader: &mut R, max: usize, buf: &mut Vec<u8>) -> std::io::Result<Read>
where
    R: AsyncBufRead + Unpin,
{
    buf.clear();
    let mut any = false;
    loop {
        let chunk = reader.fill_buf().await?;
        if chunk.is_empty() {
            return Ok(if any { Read::Line(End::Eof) } else { Read::End });
        }
        any = true;
        let (part, newline) = match chunk.iter().position(|&b| b == b'\n') {
            Some(i) => (&chunk[..i], true),
            None => (chunk, false),
        };
        if buf.len() + part.len() > max {
            return Ok(Read::TooLong);
        }
        buf.extend_from_slice(part);
        let used = part.len() + usize::from(newline);
        reader.consume(used);
        if newline {
            return Ok(Read::Line(End::Newline));
        }
    }
}

/// Skips the rest of a line; says how it ended.
async fn skip_line<R>(reader: &mut R) -> std::io::Result<End>
where
    R: AsyncBufRead + Unpin,
{
    loop {
        let chunk = reader.fill_buf().await?;
        if chunk.is_empty() {
            return Ok(End::Eof);
        }
        match chunk.iter().position(|&b| b == b'\n') {
            Some(i) => {
                reader.consume(i + 1);
                return Ok(End::Newline);
            }
            None => {
                let n = chunk.len();
                reader.consume(n);
            }
        }
    }
}

/// What the output file holds.
#[derive(Debug)]
struct Scan {
    /// The input lines it answers.
    done: LineSet,
    /// Bytes read: the whole file.
    read: u64,
    /// Bytes up to and including the last newline.
    complete: u64,
    /// What follows the last newline.
    tail: Tail,
}

/// The bytes after an output file's last newline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tail {
    /// None, or only blanks.
    None,
    /// A complete answer (or blanks) without a newline: kept, and counted.
    Complete,
    /// The beginning of an answer: the writer died while writing it. It is cut off.
    Torn,
}

/// Why an output file cannot be used.
#[derive(Debug)]
enum ScanError {
    Io(std::io::Error),
    /// Line `line` is not an answer.
    Bad {
        line: u64,
        reason: String,
    },
}

/// Reads an output file through, one line at a time, and checks that it is an answers file.
async fn scan_answers<R>(reader: &mut R, max: usize) -> Result<Scan, ScanError>
where
    R: AsyncBufRead + Unpin,
{
    let mut scan = Scan {
        done: LineSet::default(),
        read: 0,
        complete: 0,
        tail: Tail::None,
    };
    let mut buf = Vec::new();
    for at in 1u64.. {
        let bad = |reason: String| ScanError::Bad { line: at, reason };
        let end = match read_line(reader, max, &mut buf).await {
            Err(e) => return Err(ScanError::Io(e)),
            Ok(Read::End) => break,
            Ok(Read::TooLong) => return Err(bad(format!("longer than {max} bytes"))),
            Ok(Read::Line(end)) => end,
        };
        scan.read += buf.len() as u64;
        if end == End::Newline {
            scan.read += 1;
            scan.complete = scan.read;
        }
        if buf.iter().all(u8::is_ascii_whitespace) {
            if end == End::Eof {
                // Blanks without a newline: kept; the next answer starts on a line of its own.
                scan.tail = Tail::Complete;
            }
            continue;
        }
        match (end, answered_line(&buf)) {
            (_, Ok(number)) => {
                scan.done.insert(number);
                if end == End::Eof {
                    scan.tail = Tail::Complete;
                }
            }
            (End::Newline, Err(reason)) => return Err(bad(reason)),
            // The last line, unterminated: a torn answer starts as every answer does.
            (End::Eof, Err(reason)) => {
                let start = ANSWER_START.as_bytes();
                if !(buf.starts_with(start) || start.starts_with(&buf)) {
                    return Err(bad(format!("{reason}, and it has no newline")));
                }
                scan.tail = Tail::Torn;
            }
        }
    }
    Ok(scan)
}

/// The input line an answer line answers.
fn answered_line(line: &[u8]) -> Result<u64, String> {
    let value: Value = serde_json::from_slice(line).map_err(|e| format!("not JSON: {e}"))?;
    let Value::Object(map) = value else {
        return Err("not a JSON object".to_owned());
    };
    let number = map
        .get("line")
        .and_then(Value::as_u64)
        .filter(|&n| n > 0)
        .ok_or_else(|| "no \"line\" number".to_owned())?;
    if !map.contains_key("output") && !map.contains_key("error") {
        return Err("neither \"output\" nor \"error\"".to_owned());
    }
    Ok(number)
}

/// A set of line numbers, compact for the shapes of an answers file: line numbers come in
/// blocks of [`BLOCK`]; a block holding few of them keeps them as a sorted list (2 bytes
/// each), a fuller one as a bitmap (a bit per line, 512 bytes). Millions of answered lines
/// take a few hundred kilobytes, in any order and with any gaps between them (blank input
/// lines); only numbers scattered thousands apart cost more, a block each.
#[derive(Debug, Default)]
struct LineSet {
    blocks: BTreeMap<u64, Block>,
}

/// Line numbers per block.
const BLOCK: u64 = 1 << 12;
/// Words of a block's bitmap.
const BLOCK_WORDS: usize = (BLOCK / 64) as usize;
/// Beyond this many numbers a list is larger than the bitmap.
const SPARSE_MAX: usize = BLOCK_WORDS * 4;

#[derive(Debug)]
enum Block {
    /// Sorted offsets within the block.
    Sparse(Vec<u16>),
    Dense(Box<[u64; BLOCK_WORDS]>),
}

impl LineSet {
    fn split(number: u64) -> (u64, u16) {
        // The offset is below BLOCK (4096), so it fits in a u16.
        (number / BLOCK, (number % BLOCK) as u16)
    }

    fn insert(&mut self, number: u64) {
        let (key, offset) = Self::split(number);
        let block = self
            .blocks
            .entry(key)
            .or_insert_with(|| Block::Sparse(Vec::new()));
        match block {
            Block::Sparse(list) => {
                if let Err(at) = list.binary_search(&offset) {
                    list.insert(at, offset);
                }
                if list.len() > SPARSE_MAX {
                    let mut bits = Box::new([0u64; BLOCK_WORDS]);
                    for &o in list.iter() {
                        bits[usize::from(o / 64)] |= 1 << (o % 64);
                    }
                    *block = Block::Dense(bits);
                }
            }
            Block::Dense(bits) => bits[usize::from(offset / 64)] |= 1 << (offset % 64),
        }
    }

    fn contains(&self, number: u64) -> bool {
        let (key, offset) = Self::split(number);
        match self.blocks.get(&key) {
            None => false,
            Some(Block::Sparse(list)) => list.binary_search(&offset).is_ok(),
            Some(Block::Dense(bits)) => bits[usize::from(offset / 64)] & (1 << (offset % 64)) != 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn scan(text: &[u8]) -> Result<Scan, (u64, String)> {
        let mut reader = text;
        scan_answers(&mut reader, 64).await.map_err(|e| match e {
            ScanError::Bad { line, reason } => (line, reason),
            ScanError::Io(e) => (0, e.to_string()),
        })
    }

    #[tokio::test]
    async fn answered_lines_are_read_back() {
        let s = scan(b"{\"line\":1,\"output\":1}\n\n{\"error\":{},\"line\":3}\n")
            .await
            .expect("ok");
        assert!(s.done.contains(1) && s.done.contains(3) && !s.done.contains(2));
        assert_eq!((s.read, s.complete, s.tail), (45, 45, Tail::None));
        // Not answers: no line number, not JSON, no output or error, line 0.
        for bad in [
            &b"{\"x\":1}\n"[..],
            b"nope\n",
            b"{\"line\":1}\n",
            b"{\"line\":0,\"output\":1}\n",
            b"[1]\n",
        ] {
            assert_eq!(scan(bad).await.expect_err("not an answer").0, 1);
        }
        // The bad line is found after good ones, by its number.
        let e = scan(b"{\"line\":1,\"output\":1}\n{\"id\":2,\"input\":{}}\n")
            .await
            .expect_err("a request, not an answer");
        assert_eq!(e.0, 2);
    }

    #[tokio::test]
    async fn only_a_torn_answer_counts_as_torn() {
        let s = scan(b"{\"line\":2,\"output\":1}\n{\"line\":5,\"out")
            .await
            .expect("ok");
        assert_eq!((s.complete, s.read, s.tail), (22, 36, Tail::Torn));
        assert!(s.done.contains(2) && !s.done.contains(5));
        assert_eq!(scan(b"{\"li").await.expect("ok").tail, Tail::Torn);
        // A complete answer missing its newline is kept.
        let s = scan(b"{\"line\":2,\"output\":1}").await.expect("ok");
        assert_eq!(s.tail, Tail::Complete);
        assert!(s.done.contains(2));
        // Anything else without a newline is not ours to cut.
        assert_eq!(
            scan(b"{\"line\":2,\"output\":1}\n{\"id\":1,\"inp")
                .await
                .expect_err("not an answer")
                .0,
            2
        );
        scan(b"some text without a newline")
            .await
            .expect_err("not an answer");
    }

    #[tokio::test]
    async fn an_over_long_output_line_is_refused_without_reading_it_all() {
        let long = [b'x'; 1000];
        let e = scan(&long).await.expect_err("too long");
        assert_eq!(e.0, 1);
        assert!(e.1.contains("longer than 64 bytes"), "{}", e.1);
    }

    async fn works(text: &[u8]) -> Vec<Work> {
        let (mut reader, mut buf, mut number) = (text, Vec::new(), 0);
        let mut works = Vec::new();
        while let Some(work) = next_work(&mut reader, 16, &mut buf, &mut number)
            .await
            .expect("read")
        {
            works.push(work);
        }
        works
    }

    #[tokio::test]
    async fn input_lines_run_only_once_complete() {
        let text = b"{\"id\":1}\r\n\n \r\nxxxxxxxxxxxxxxxxxxxxx\n\xff\n{\"id\":2,\"inp";
        assert_eq!(
            works(text).await,
            [
                Work::Run(1, "{\"id\":1}".to_owned()),
                Work::Refused(4, Refusal::TooLong { max: 16 }),
                Work::Refused(5, Refusal::NotUtf8),
                Work::Unterminated,
            ]
        );
        // An unterminated over-long line is left alone too, and a blank one is nothing.
        assert_eq!(
            works(b"\nxxxxxxxxxxxxxxxxxxxxxxxxxxxx").await,
            [Work::Unterminated]
        );
        assert_eq!(works(b"{}\n  ").await, [Work::Run(1, "{}".to_owned())]);
    }

    #[test]
    fn answers_start_with_their_line_number() {
        let three = RawValue::from_string("3".into()).expect("json");
        let line = error_line(7, &three, &Failure::NoSuchRoute { route: "x".into() });
        assert!(line.starts_with("{\"line\":7,"), "{line}");
        let value: Value = serde_json::from_str(&line).expect("json");
        assert_eq!(value["id"], 3);
        assert_eq!(value["error"]["kind"], "no_such_route");
        assert_eq!(answered_line(line.as_bytes()), Ok(7));
    }

    #[test]
    fn an_answer_too_long_to_read_back_becomes_an_error() {
        let nine = RawValue::from_string("9".into()).expect("json");
        let (line, failed) = output_line(2, &nine, "r", &Value::from("short"), 100);
        assert_eq!(
            (line.as_str(), failed),
            ("{\"line\":2,\"id\":9,\"output\":\"short\"}", false)
        );
        let long = Value::from("x".repeat(500));
        let (line, failed) = output_line(2, &nine, "r", &long, 400);
        assert!(failed && line.len() <= 400, "{line}");
        let value: Value = serde_json::from_str(&line).expect("json");
        assert_eq!(
            (value["line"].as_u64(), value["id"].as_u64()),
            (Some(2), Some(9))
        );
        assert_eq!(value["error"]["kind"], "internal");
        assert!(
            value["error"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("limit of 400"))
        );
    }

    #[test]
    fn line_sets_hold_any_order_compactly() {
        let mut set = LineSet::default();
        // Every other line, backwards, over many blocks; then a far one.
        for n in (1..=20_000u64).rev().filter(|n| n % 2 == 1) {
            set.insert(n);
        }
        set.insert(1 << 40);
        set.insert(3);
        for n in 0..=20_001u64 {
            assert_eq!(set.contains(n), n % 2 == 1 && n < 20_000, "{n}");
        }
        assert!(set.contains(1 << 40) && !set.contains((1 << 40) + 1));
        // Half-full blocks are bitmaps; the far one is a short list.
        let dense = set
            .blocks
            .values()
            .filter(|b| matches!(b, Block::Dense(_)))
            .count();
        assert_eq!((dense, set.blocks.len()), (5, 6));
    }
}
