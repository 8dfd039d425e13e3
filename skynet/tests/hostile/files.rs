//! The file initiator (`skynet initiator file`) given files that could make it lose data: the
//! same file as input and output, an output that is not an answers file, a FIFO or a device, a
//! missing input, a torn last input line, and a large answers file to resume from.
//!
//! Each test runs a store member as a `skynet node` process, a node in the test process that
//! hosts the `greeter` service and a router (the route `hello`, one hop `greeter.greet`), and
//! the file initiator as a real `skynet initiator file` process. Unlike `common::Cluster`, the
//! service here counts its calls and can hold its answers back, and a file run's stderr is
//! kept, since refusals are read from it.

use std::collections::BTreeMap;
use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use anyhow::{Context as _, bail, ensure};
use serde_json::{Value, json};
use skynet::route::{self, Hop, Route, Router};
use skynet::{Node, ServiceDef, ServiceError, StoreConfig};
use tokio::sync::{oneshot, watch};

use crate::common::TestResult;

const BIN: &str = env!("CARGO_BIN_EXE_skynet");
/// Upper bound of every wait: generous, since the machine may be busy; never a measurement.
const WAIT: Duration = Duration::from_secs(120);

/// A child process, killed (SIGKILL) and reaped when dropped.
struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Everything `reader` yields until its end, read on a thread of its own.
fn read_to_end_in_thread(
    mut reader: impl std::io::Read + Send + 'static,
) -> oneshot::Receiver<String> {
    let (tx, rx) = oneshot::channel();
    std::thread::spawn(move || {
        let mut bytes = Vec::new();
        let _ = reader.read_to_end(&mut bytes);
        let _ = tx.send(String::from_utf8_lossy(&bytes).into_owned());
    });
    rx
}

/// A store member process, a worker node (service + router) and the route `hello`.
struct Cluster {
    dir: tempfile::TempDir,
    _store: Guard,
    seed: SocketAddr,
    worker: Node,
    /// How many greetings the service has been asked for.
    greeted: watch::Receiver<u64>,
    /// While `false`, the service holds its answers back.
    gate: watch::Sender<bool>,
}

impl Cluster {
    async fn start() -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let certs = dir.path().join("certs");
        let log = std::fs::File::create(dir.path().join("store.log"))?;
        let mut child = Command::new(BIN)
            .args(["--log-level", "warn", "node", "--name", "store"])
            .args(["--port", "0", "--voters", "1", "--data-dir"])
            .arg(dir.path().join("store"))
            .arg("--certs")
            .arg(&certs)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .context("starting skynet node")?;
        let stdout = child.stdout.take().context("stdout")?;
        let store = Guard(child);
        let (tx, ready) = oneshot::channel();
        std::thread::spawn(move || {
            let line = BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
                .find(|line| line.starts_with("ready "));
            let _ = tx.send(line);
        });
        let ready = tokio::time::timeout(WAIT, ready)
            .await
            .context("skynet node printed no ready line in time")??
            .context("skynet node exited before its ready line")?;
        let seed: SocketAddr = field(&ready, "addr")
            .context("addr in the ready line")?
            .parse()?;

        let (count, greeted) = watch::channel(0u64);
        let (gate, open) = watch::channel(true);
        let greeter = ServiceDef::builder("greeter", "1.0.0").idempotent_method(
            "greet",
            move |_, req: Value| {
                count.send_modify(|n| *n += 1);
                let mut open = open.clone();
                async move {
                    let _ = open.wait_for(|open| *open).await;
                    let name = req.get("name").and_then(Value::as_str).unwrap_or("nobody");
                    Ok::<_, ServiceError>(json!({ "greeting": format!("Hello {name}") }))
                }
            },
        );
        let router = Router::new();
        let worker = Node::builder()
            .name("worker")
            .development_credentials(&certs)
            .store(StoreConfig::client(vec![seed]))
            .service(greeter)
            .service(router.service())
            .start()
            .await?;
        router.attach(&worker)?;
        let store_handle = worker.store().context("store")?;
        route::put(
            &store_handle,
            &Route::new("hello", vec![Hop::new("greeter", "greet").retry(true)]),
        )
        .await?;
        let registry = worker.registry().context("registry")?;
        registry
            .wait_for(WAIT, |s| {
                !s.instances("greeter").is_empty() && !s.instances("skynet.router").is_empty()
            })
            .await
            .context("the worker registered")?;
        router
            .table()
            .context("router table")?
            .wait_for(WAIT, |t| t.get("hello").is_some())
            .await
            .context("the router sees the route")?;
        Ok(Self {
            dir,
            _store: store,
            seed,
            worker,
            greeted,
            gate,
        })
    }

    /// Starts `skynet initiator file --input input --output output`.
    fn file_run(&self, input: &Path, output: &Path) -> anyhow::Result<FileRun> {
        let mut child = Command::new(BIN)
            .args([
                "--log-level",
                "warn",
                "initiator",
                "file",
                "--route",
                "hello",
            ])
            .args([
                "--concurrency",
                "4",
                "--join",
                &self.seed.to_string(),
                "--certs",
            ])
            .arg(self.dir.path().join("certs"))
            .arg("--input")
            .arg(input)
            .arg("--output")
            .arg(output)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting skynet initiator file")?;
        let stdout = read_to_end_in_thread(child.stdout.take().context("stdout")?);
        let stderr = read_to_end_in_thread(child.stderr.take().context("stderr")?);
        Ok(FileRun {
            child: Guard(child),
            stdout,
            stderr,
        })
    }

    fn greeted(&self) -> u64 {
        *self.greeted.borrow()
    }

    async fn stop(self) {
        self.worker.shutdown().await;
    }
}

/// The value of `key=value` in a line of fields.
fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    line.split_whitespace()
        .find_map(|f| f.strip_prefix(key)?.strip_prefix('='))
}

/// A running `skynet initiator file` process.
struct FileRun {
    child: Guard,
    stdout: oneshot::Receiver<String>,
    stderr: oneshot::Receiver<String>,
}

/// How a file run ended.
#[derive(Debug)]
struct Outcome {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

impl FileRun {
    fn pid(&self) -> u32 {
        self.child.0.id()
    }

    /// Waits (bounded) for the process to end.
    async fn finish(mut self) -> anyhow::Result<Outcome> {
        let (stdout, stderr) = tokio::time::timeout(WAIT, async {
            Ok::<_, oneshot::error::RecvError>((self.stdout.await?, self.stderr.await?))
        })
        .await
        .context("the file run did not end in time")??;
        // Both pipes are closed: the process is exiting.
        let status = self.child.0.wait()?;
        Ok(Outcome {
            status,
            stdout,
            stderr,
        })
    }
}

impl Outcome {
    /// The counts of a successful run's `done ...` line.
    fn done(&self) -> anyhow::Result<BTreeMap<String, u64>> {
        ensure!(self.status.success(), "the run failed: {self:?}");
        let line = self
            .stdout
            .lines()
            .find(|l| l.starts_with("done "))
            .with_context(|| format!("no done line: {self:?}"))?;
        let mut counts = BTreeMap::new();
        for key in ["answered", "failed", "already_done", "unterminated"] {
            let value = field(line, key).with_context(|| format!("no {key} in {line:?}"))?;
            counts.insert(key.to_owned(), value.parse()?);
        }
        Ok(counts)
    }

    /// Checks that the run was refused, saying `why`, without a done line.
    fn refused(&self, why: &str) -> anyhow::Result<()> {
        ensure!(
            !self.status.success() && self.stderr.contains(why) && self.stdout.is_empty(),
            "expected a refusal saying {why:?}: {self:?}"
        );
        Ok(())
    }
}

fn counts(answered: u64, already_done: u64, unterminated: u64) -> BTreeMap<String, u64> {
    [
        ("answered", answered),
        ("failed", 0),
        ("already_done", already_done),
        ("unterminated", unterminated),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect()
}

/// Request lines `{"id":i,"input":{"name":"line i"}}` for `lines`, each with its newline.
fn requests(lines: std::ops::RangeInclusive<u64>) -> String {
    lines
        .map(|i| format!("{{\"id\":{i},\"input\":{{\"name\":\"line {i}\"}}}}\n"))
        .collect()
}

/// The answers of an output file by line number; fails if a line is answered twice.
fn answers(output: &Path) -> anyhow::Result<BTreeMap<u64, Value>> {
    let mut answers = BTreeMap::new();
    for line in std::fs::read_to_string(output)?.lines() {
        let answer: Value = serde_json::from_str(line)?;
        let number = answer["line"].as_u64().context("a line number")?;
        if answers.insert(number, answer).is_some() {
            bail!("line {number} answered twice");
        }
    }
    Ok(answers)
}

fn greeting(answer: &Value) -> Option<&str> {
    answer["output"]["greeting"].as_str()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_file_as_input_and_output_is_refused_and_left_as_it_was() -> TestResult {
    let cluster = Cluster::start().await?;
    let dir = tempfile::tempdir()?;
    let input = dir.path().join("requests.jsonl");
    // The last request has no newline: a run that cut "torn" lines first would cut it.
    let mut text = requests(1..=50);
    text.pop();
    std::fs::write(&input, &text)?;
    let hard = dir.path().join("hard-link.jsonl");
    std::fs::hard_link(&input, &hard)?;
    let soft = dir.path().join("symlink.jsonl");
    std::os::unix::fs::symlink(&input, &soft)?;
    std::fs::create_dir(dir.path().join("sub"))?;
    let dotted = dir.path().join("sub/../requests.jsonl");
    // A one-line file without a newline: it was once cut to nothing.
    let single = dir.path().join("single.jsonl");
    let single_text = r#"{"id":1,"input":{"name":"x"}}"#;
    std::fs::write(&single, single_text)?;

    for (input, output) in [
        (&input, &input),
        (&input, &hard),
        (&input, &soft),
        (&soft, &input),
        (&input, &dotted),
        (&single, &single),
    ] {
        let outcome = cluster.file_run(input, output)?.finish().await?;
        outcome.refused("are the same file")?;
    }
    assert_eq!(std::fs::read_to_string(&input)?, text);
    assert_eq!(std::fs::read_to_string(&single)?, single_text);
    assert_eq!(cluster.greeted(), 0, "nothing ran");
    cluster.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_output_that_is_not_an_answers_file_is_refused_and_left_as_it_was() -> TestResult {
    let cluster = Cluster::start().await?;
    let dir = tempfile::tempdir()?;
    let input = dir.path().join("requests.jsonl");
    std::fs::write(&input, requests(1..=10))?;

    // One long line without a newline (a minified JSON document, say): not a torn answer.
    let document = format!(
        "{{\"items\":[{}]}}",
        (0..10_000)
            .map(|i| i.to_string())
            .collect::<Vec<_>>()
            .join(",")
    );
    // Another run's requests, whose last line is still being written.
    let mut other_requests = requests(1..=2_000);
    other_requests.push_str("{\"id\":2001,\"inp");
    // Answers, then a line that is not one, then a torn answer: nothing may be cut.
    let mixed = "{\"line\":1,\"id\":1,\"output\":{}}\nnot an answer\n{\"line\":2,\"out";
    // Answers, then a line longer than any answer may be.
    let mut long = "{\"line\":1,\"id\":1,\"output\":{}}\n".to_owned();
    long.push_str(&"x".repeat(40 << 20));
    long.push('\n');
    for (name, text, why) in [
        ("document.json", &document, "line 1: no \"line\" number"),
        ("other.jsonl", &other_requests, "line 1: no \"line\" number"),
        ("mixed.jsonl", &mixed.to_owned(), "line 2: not JSON"),
        ("long.jsonl", &long, "line 2: longer than"),
    ] {
        let output = dir.path().join(name);
        std::fs::write(&output, text)?;
        let outcome = cluster.file_run(&input, &output)?.finish().await?;
        outcome.refused("is not an answers file")?;
        outcome.refused(why)?;
        assert!(
            std::fs::read_to_string(&output)? == *text,
            "{name} was changed"
        );
    }
    assert_eq!(cluster.greeted(), 0, "nothing ran");
    cluster.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fifo_or_a_device_is_refused_without_being_read() -> TestResult {
    let cluster = Cluster::start().await?;
    let dir = tempfile::tempdir()?;
    let input = dir.path().join("requests.jsonl");
    std::fs::write(&input, requests(1..=3))?;
    let fifo = dir.path().join("fifo");
    let made = Command::new("mkfifo").arg(&fifo).status()?;
    ensure!(made.success(), "mkfifo: {made}");
    let output = dir.path().join("answers.jsonl");

    // /dev/full reads zeros forever; a FIFO blocks its reader until someone writes.
    let full = PathBuf::from("/dev/full");
    for (input, output, why) in [
        (
            &input,
            &full,
            "/dev/full is a character device, not a regular file",
        ),
        (&input, &fifo, "fifo is a FIFO, not a regular file"),
        (&fifo, &output, "fifo is a FIFO, not a regular file"),
        (
            &dir.path().to_owned(),
            &output,
            "is a directory, not a regular file",
        ),
    ] {
        let outcome = cluster.file_run(input, output)?.finish().await?;
        outcome.refused(why)?;
    }
    assert!(!output.exists(), "no output file was created");
    assert_eq!(cluster.greeted(), 0, "nothing ran");
    cluster.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_or_empty_input_leaves_no_output_file() -> TestResult {
    let cluster = Cluster::start().await?;
    let dir = tempfile::tempdir()?;
    let output = dir.path().join("answers.jsonl");

    let missing = dir.path().join("missing.jsonl");
    let outcome = cluster.file_run(&missing, &output)?.finish().await?;
    outcome.refused("missing.jsonl")?;
    assert!(!output.exists(), "a missing input left an output file");

    // Nothing to answer: nothing to write, so no file either.
    let blank = dir.path().join("blank.jsonl");
    std::fs::write(&blank, "\n  \n\n")?;
    let outcome = cluster.file_run(&blank, &output)?.finish().await?;
    assert_eq!(outcome.done()?, counts(0, 0, 0));
    assert!(
        !output.exists(),
        "an input without requests left an output file"
    );
    cluster.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_torn_last_input_line_is_answered_once_it_is_complete() -> TestResult {
    let cluster = Cluster::start().await?;
    let dir = tempfile::tempdir()?;
    let (input, output) = (dir.path().join("in.jsonl"), dir.path().join("out.jsonl"));
    // The writer of the input has got this far with line 4.
    let mut text = requests(1..=3);
    text.push_str("{\"id\":4,\"input\":{\"name\":\"line 4");
    std::fs::write(&input, &text)?;

    let first = cluster.file_run(&input, &output)?.finish().await?;
    assert_eq!(first.done()?, counts(3, 0, 1));
    let after_first = answers(&output)?;
    assert_eq!(after_first.keys().copied().collect::<Vec<_>>(), [1, 2, 3]);

    // The writer finishes the line; the next run answers it, and only it.
    std::fs::OpenOptions::new()
        .append(true)
        .open(&input)?
        .write_all(b"\"}}\n")?;
    let second = cluster.file_run(&input, &output)?.finish().await?;
    assert_eq!(second.done()?, counts(1, 3, 0));
    let all = answers(&output)?;
    assert_eq!(all.len(), 4);
    for (i, answer) in &all {
        assert_eq!(
            greeting(answer),
            Some(format!("Hello line {i}").as_str()),
            "{answer}"
        );
    }
    assert_eq!(cluster.greeted(), 4, "every line ran once");
    cluster.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_torn_last_answer_is_cut_and_its_line_runs_again() -> TestResult {
    let cluster = Cluster::start().await?;
    let dir = tempfile::tempdir()?;
    let (input, output) = (dir.path().join("in.jsonl"), dir.path().join("out.jsonl"));
    std::fs::write(&input, requests(1..=4))?;
    let kept = "{\"line\":2,\"id\":2,\"output\":{\"greeting\":\"Hello line 2\"}}\n\
                {\"line\":1,\"id\":1,\"output\":{\"greeting\":\"Hello line 1\"}}\n";
    std::fs::write(&output, format!("{kept}{{\"line\":3,\"id\":3,\"out"))?;

    let outcome = cluster.file_run(&input, &output)?.finish().await?;
    assert_eq!(outcome.done()?, counts(2, 2, 0));
    let text = std::fs::read_to_string(&output)?;
    assert!(text.starts_with(kept), "{text}");
    let all = answers(&output)?;
    assert_eq!(all.keys().copied().collect::<Vec<_>>(), [1, 2, 3, 4]);
    assert_eq!(greeting(&all[&3]), Some("Hello line 3"));
    cluster.stop().await;
    Ok(())
}

/// The peak resident memory of a process, in bytes (`VmHWM` of /proc/<pid>/status).
fn peak_rss(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kb = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().strip_suffix("kB"))
        .context("VmHWM")?
        .trim()
        .parse::<u64>()?;
    Ok(kb * 1024)
}

/// Resumes a run whose answers file already answers lines `1..=done` of `done + 2`; returns
/// the answers file's size and the run's peak resident memory once it had read it.
async fn resume(cluster: &Cluster, dir: &Path, done: u64) -> anyhow::Result<(u64, u64)> {
    let input = dir.join(format!("in-{done}.jsonl"));
    let output = dir.join(format!("out-{done}.jsonl"));
    {
        let mut requests = std::io::BufWriter::new(std::fs::File::create(&input)?);
        let mut answers = std::io::BufWriter::new(std::fs::File::create(&output)?);
        for i in 1..=done + 2 {
            writeln!(
                requests,
                "{{\"id\":{i},\"input\":{{\"name\":\"line {i}\"}}}}"
            )?;
            if i <= done {
                writeln!(
                    answers,
                    "{{\"line\":{i},\"id\":{i},\"output\":{{\"greeting\":\"Hello line {i}\"}}}}"
                )?;
            }
        }
        requests.flush()?;
        answers.flush()?;
    }
    let size = std::fs::metadata(&output)?.len();

    // Hold the answers back: once the run's first request arrives, the whole answers file has
    // been read, and the process is still there to be looked at.
    cluster.gate.send_replace(false);
    let mut greeted = cluster.greeted.clone();
    let before = *greeted.borrow_and_update();
    let run = cluster.file_run(&input, &output)?;
    tokio::time::timeout(WAIT, greeted.wait_for(|n| *n > before))
        .await
        .context("no request arrived in time")??;
    let peak = peak_rss(run.pid());
    cluster.gate.send_replace(true);
    let outcome = run.finish().await?;
    assert_eq!(outcome.done()?, counts(2, done, 0));
    // The old answers are untouched; the two new ones follow them.
    let mut file = std::fs::File::open(&output)?;
    let mut tail = String::new();
    std::io::Seek::seek(&mut file, std::io::SeekFrom::Start(size))?;
    file.read_to_string(&mut tail)?;
    let mut lines: Vec<u64> = tail
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l)?["line"]
                .as_u64()
                .context("line")
        })
        .collect::<anyhow::Result<_>>()?;
    lines.sort_unstable();
    assert_eq!(lines, [done + 1, done + 2]);
    Ok((size, peak?))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resuming_from_a_large_answers_file_does_not_hold_it_in_memory() -> TestResult {
    const MIB: u64 = 1 << 20;
    let cluster = Cluster::start().await?;
    let dir = tempfile::tempdir()?;
    // What a run needs anyway (runtime, QUIC, TLS) depends on the machine: measure it on a
    // small file first.
    let (_, baseline) = resume(&cluster, dir.path(), 1_000).await?;
    let (size, peak) = resume(&cluster, dir.path(), 800_000).await?;
    assert!(size >= 50 * MIB, "{size}");
    assert!(
        peak < baseline + 8 * MIB,
        "the run's peak resident memory was {} MiB for a {} MiB answers file ({} MiB for a \
         small one)",
        peak / MIB,
        size / MIB,
        baseline / MIB
    );
    cluster.stop().await;
    Ok(())
}
