//! The file initiator: a JSONL file of requests in, a JSONL file of answers out.
//!
//! Each input line is a request as the TCP initiator takes it (`{"route": .., "input": ..,
//! "id": ..}`, `route` optional with a default); blank lines are skipped. Each answer is one
//! output line naming its input line (1-based): `{"line": 3, "id": .., "output": ..}` or
//! `{"line": 3, "id": .., "error": {..}}`, in the order the answers come (several requests run
//! at once). Every answer is flushed to disk (fdatasync) before the next is written.
//!
//! **Resuming.** Started again on the same files after a crash, the initiator reads the output
//! file, cuts off a torn last line, and skips every input line that already has an answer: a
//! finished line is never run again. A line that was running when the process died has no
//! answer yet and runs again, so the file as a whole is processed at least once per line and
//! answered exactly once per line.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use futures_util::StreamExt as _;
use serde_json::Value;
use tokio::io::AsyncWriteExt as _;

use super::tcp::parse_request;
use super::{Failure, Line, RouteCaller, limited_lines};

/// Settings of a file run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileConfig {
    /// The route of requests that name none.
    pub default_route: Option<String>,
    /// Requests that run at once. Default 16.
    pub concurrency: usize,
    /// Longest input line, in bytes. Default 1 MiB.
    pub max_line: usize,
}

impl Default for FileConfig {
    fn default() -> Self {
        Self {
            default_route: None,
            concurrency: 16,
            max_line: 1 << 20,
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
}

/// Why a file run stopped.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FileError {
    /// Reading or writing a file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What failed.
        source: std::io::Error,
    },
    /// The output file holds a line that is not an answer of this format.
    #[error("{path}: line {line} is not an answer: {reason}")]
    BadOutput {
        /// The output file.
        path: PathBuf,
        /// Its line number.
        line: u64,
        /// What is wrong.
        reason: String,
    },
}

/// Runs every unanswered request of `input` and appends the answers to `output`.
pub async fn run_file(
    caller: &RouteCaller,
    input: &Path,
    output: &Path,
    config: &FileConfig,
) -> Result<FileSummary, FileError> {
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| FileError::Io { path, source }
    };
    let done = answered_lines(output).await?;
    let mut out = tokio::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(output)
        .await
        .map_err(io(output))?;
    let file = tokio::fs::File::open(input).await.map_err(io(input))?;
    let lines = limited_lines(file, config.max_line);
    let mut summary = FileSummary::default();
    let steps = lines
        .enumerate()
        .filter_map(|(i, line)| {
            let number = i as u64 + 1;
            let skip = done.contains(&number);
            async move {
                match line {
                    _ if skip => Some(Ok(Work::Done)),
                    Ok(Line::Text(text)) if text.trim().is_empty() => None,
                    Ok(Line::Text(text)) => Some(Ok(Work::Run(number, text))),
                    Ok(Line::Refused(why)) => Some(Ok(Work::Refused(number, why))),
                    Err(e) => Some(Err(e)),
                }
            }
        })
        .map(|work| async move {
            Ok(match work? {
                Work::Done => None,
                Work::Run(number, text) => Some(answer(caller, config, number, &text).await),
                Work::Refused(number, why) => {
                    let failure = Failure::BadRequest {
                        message: why.to_string(),
                    };
                    Some((error_line(number, &Value::Null, &failure), true))
                }
            })
        })
        .buffer_unordered(config.concurrency.max(1));
    tokio::pin!(steps);
    while let Some(step) = steps.next().await {
        let step: Result<_, std::io::Error> = step;
        let Some((line, failed)) = step.map_err(io(input))? else {
            summary.already_done += 1;
            continue;
        };
        out.write_all(line.as_bytes()).await.map_err(io(output))?;
        out.write_all(b"\n").await.map_err(io(output))?;
        out.sync_data().await.map_err(io(output))?;
        summary.answered += 1;
        if failed {
            summary.failed += 1;
        }
    }
    Ok(summary)
}

/// What to do with one input line.
enum Work {
    /// An earlier run answered it.
    Done,
    /// Run it: line number and text.
    Run(u64, String),
    /// Answer that it cannot be read (too long, not UTF-8).
    Refused(u64, super::Refusal),
}

/// Runs one request; returns its answer line and whether it failed.
async fn answer(
    caller: &RouteCaller,
    config: &FileConfig,
    number: u64,
    text: &str,
) -> (String, bool) {
    let request = match parse_request(text, config.default_route.as_deref()) {
        Ok(request) => request,
        Err((id, failure)) => return (error_line(number, &id, &failure), true),
    };
    match caller.run(&request.route, request.input).await {
        Ok(output) => (
            serde_json::json!({ "line": number, "id": request.id, "output": output }).to_string(),
            false,
        ),
        Err(failure) => (error_line(number, &request.id, &failure), true),
    }
}

fn error_line(number: u64, id: &Value, failure: &Failure) -> String {
    let mut body = failure.to_json();
    if let Value::Object(map) = &mut body {
        map.insert("line".to_owned(), Value::from(number));
        map.insert("id".to_owned(), id.clone());
    }
    body.to_string()
}

/// The input lines the output file already answers. A torn last line (no newline: the
/// process died while writing it) is cut off.
async fn answered_lines(output: &Path) -> Result<HashSet<u64>, FileError> {
    let bytes = match tokio::fs::read(output).await {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(HashSet::new()),
        Err(source) => {
            return Err(FileError::Io {
                path: output.to_owned(),
                source,
            });
        }
    };
    let complete = bytes.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    if complete < bytes.len() {
        tracing::warn!(path = %output.display(), "cutting off a torn last answer");
        let file = std::fs::OpenOptions::new()
            .write(true)
            .open(output)
            .and_then(|f| f.set_len(complete as u64).and_then(|()| f.sync_all()));
        file.map_err(|source| FileError::Io {
            path: output.to_owned(),
            source,
        })?;
    }
    parse_answered(&bytes[..complete]).map_err(|(line, reason)| FileError::BadOutput {
        path: output.to_owned(),
        line,
        reason,
    })
}

/// The `line` numbers of complete answer lines.
fn parse_answered(text: &[u8]) -> Result<HashSet<u64>, (u64, String)> {
    let mut done = HashSet::new();
    for (i, line) in text.split(|&b| b == b'\n').enumerate() {
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let at = i as u64 + 1;
        let value: Value = serde_json::from_slice(line).map_err(|e| (at, e.to_string()))?;
        let number = value
            .get("line")
            .and_then(Value::as_u64)
            .ok_or_else(|| (at, "no \"line\" number".to_owned()))?;
        done.insert(number);
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answered_lines_are_read_back() {
        let text = b"{\"line\":1,\"output\":1}\n\n{\"line\":3,\"error\":{}}\n";
        assert_eq!(parse_answered(text).expect("ok"), HashSet::from([1, 3]));
        assert_eq!(parse_answered(b"{\"x\":1}\n").expect_err("no line").0, 1);
        assert!(parse_answered(b"nope\n").is_err());
    }

    #[tokio::test]
    async fn a_torn_last_answer_is_cut_off() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("out.jsonl");
        std::fs::write(&path, b"{\"line\":2,\"output\":1}\n{\"line\":5,\"out").expect("write");
        let done = answered_lines(&path).await.expect("ok");
        assert_eq!(done, HashSet::from([2]));
        assert_eq!(
            std::fs::read(&path).expect("read"),
            b"{\"line\":2,\"output\":1}\n"
        );
        assert!(
            answered_lines(&dir.path().join("missing"))
                .await
                .expect("ok")
                .is_empty()
        );
    }
}
