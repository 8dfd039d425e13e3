//! Slow and silent clients against the connection slots of the three TCP listeners (the HTTP
//! initiator, the TCP initiator, the admin port): with every slot held by clients that send
//! nothing or trickle a head, a body or a line, a normal request is still answered; one address
//! cannot take more than its share; a silent connection is closed after the idle timeout, one
//! that never reads its answers after the write timeout, and HTTP heads and bodies that trickle
//! in after the head timeout and below the minimum body rate.
//!
//! The listeners run in this process with 16 slots (4 per address) and deadlines far longer
//! than any wait here, so that only what is under test can free a slot. Attackers connect from
//! 127.0.0.2 to 127.0.0.5, the normal client from 127.0.0.1. A listener accepts connections in
//! the order they completed their handshake, so every attacker holds its slot before the
//! normal client is accepted.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};
use serde_json::Value;
use skynet::initiator::RouteCaller;
use skynet::initiator::http::{HttpConfig, HttpInitiator};
use skynet::initiator::tcp::{TcpConfig, TcpInitiator};
use skynet::{ListenerLimits, Node};
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::net::{TcpSocket, TcpStream};
use tokio::task::JoinSet;

use super::common::{TestResult, WAIT, parse_response};

/// Slots of every listener under test.
const SLOTS: usize = 16;
/// Addresses the attackers connect from: 127.0.0.2 ..= 127.0.0.5, a full share each.
const ATTACKER_ADDRESSES: u8 = 4;
/// How long a normal request may take before the test calls it unanswered: a guard against a
/// hang, not a measurement (the figure is 1 s; the measured time is printed).
const ANSWERED_WITHIN: Duration = Duration::from_secs(5);
/// How long a connection past a short deadline may take to be closed: a guard, not a
/// measurement.
const CLOSED_WITHIN: Duration = Duration::from_secs(5);
/// A deadline no test waits for.
const LONG: Duration = Duration::from_secs(120);

/// Limits whose deadlines never fire during a test: slots are freed only by what is tested.
fn limits() -> ListenerLimits {
    ListenerLimits {
        max_connections: SLOTS,
        max_per_address: None,
        head_timeout: LONG,
        idle_timeout: LONG,
        body_timeout: LONG,
        body_grace: LONG,
        min_body_rate: 1024,
        write_timeout: LONG,
        max_lifetime: LONG * 2,
    }
}

fn loopback(last: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, last))
}

/// A connection to `addr` from 127.0.0.`from`.
async fn connect_from(from: u8, addr: SocketAddr) -> anyhow::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(loopback(from), 0))?;
    let stream = tokio::time::timeout(WAIT, socket.connect(addr))
        .await
        .context("connecting")??;
    Ok(stream)
}

/// A node to run routes through and to host an admin port: no store, so a route run fails at
/// once with a friendly error, which is an answer all the same.
async fn node(certs: &std::path::Path, admin: Option<ListenerLimits>) -> anyhow::Result<Node> {
    let mut builder = Node::builder().name("slots").development_credentials(certs);
    if let Some(limits) = admin {
        builder = builder
            .admin(SocketAddr::new(loopback(1), 0))
            .admin_limits(limits);
    }
    Ok(builder.start().await?)
}

/// What an attacker does with its connection.
#[derive(Debug, Clone, Copy)]
enum Attack {
    /// Connects and sends nothing.
    Silent,
    /// Sends the start of a request head (HTTP) or line (TCP), then a byte every 200 ms.
    TrickleHead,
    /// Sends the start of a request head, then nothing.
    Stall,
    /// HTTP: sends a head announcing a 1 MB body, waits until the server asks for the body
    /// (`100 Continue`, so the handler is reading it), then sends a byte every 200 ms.
    TrickleBody,
}

/// Fills every slot of the listener at `addr`, the attacks taken in turn. The connections live
/// as long as the returned set.
async fn fill_slots(
    addr: SocketAddr,
    attacks: &[Attack],
    head: &'static [u8],
) -> anyhow::Result<JoinSet<()>> {
    let mut attackers = JoinSet::new();
    for i in 0..SLOTS {
        let from = 2 + (i % usize::from(ATTACKER_ADDRESSES)) as u8;
        let mut stream = connect_from(from, addr).await?;
        let attack = attacks[i % attacks.len()];
        let first: &[u8] = match attack {
            Attack::Silent => {
                attackers.spawn(async move {
                    let mut sink = [0u8; 64];
                    // Holds the connection until the server closes it.
                    while matches!(stream.read(&mut sink).await, Ok(n) if n > 0) {}
                });
                continue;
            }
            Attack::TrickleHead => head,
            Attack::Stall => {
                stream.write_all(head).await?;
                attackers.spawn(async move {
                    let mut sink = [0u8; 64];
                    while matches!(stream.read(&mut sink).await, Ok(n) if n > 0) {}
                });
                continue;
            }
            Attack::TrickleBody => {
                stream
                    .write_all(
                        b"POST /v1/routes/hello HTTP/1.1\r\nhost: t\r\n\
                          content-type: application/json\r\ncontent-length: 1000000\r\n\
                          expect: 100-continue\r\n\r\n",
                    )
                    .await?;
                let mut reply = [0u8; 25];
                tokio::time::timeout(WAIT, stream.read_exact(&mut reply))
                    .await
                    .context("waiting for 100 Continue")??;
                ensure!(
                    reply.starts_with(b"HTTP/1.1 100 Continue"),
                    "{:?}",
                    String::from_utf8_lossy(&reply)
                );
                b"["
            }
        };
        stream.write_all(first).await?;
        attackers.spawn(async move {
            // The attacker's pace, not a synchronisation: one byte every 200 ms while the
            // server takes them.
            let mut interval = tokio::time::interval(Duration::from_millis(200));
            loop {
                interval.tick().await;
                if stream.write_all(b"1").await.is_err() {
                    return;
                }
            }
        });
    }
    Ok(attackers)
}

/// Sends `request` from 127.0.0.1 on a new connection and reads the whole response (the
/// request asks the server to close); returns it and how long it took.
async fn ask(addr: SocketAddr, request: &[u8]) -> anyhow::Result<(Vec<u8>, Duration)> {
    let started = Instant::now();
    let mut stream = connect_from(1, addr).await?;
    stream.write_all(request).await?;
    let mut response = Vec::new();
    tokio::time::timeout(ANSWERED_WITHIN, stream.read_to_end(&mut response))
        .await
        .context("no answer in time")??;
    Ok((response, started.elapsed()))
}

/// One HTTP GET of `path` from 127.0.0.1; the status and how long it took.
async fn http_get(addr: SocketAddr, path: &str) -> anyhow::Result<(u16, Duration)> {
    let request = format!("GET {path} HTTP/1.1\r\nhost: t\r\nconnection: close\r\n\r\n");
    let (response, took) = ask(addr, request.as_bytes()).await?;
    ensure!(
        !response.is_empty(),
        "the server closed the connection without an answer"
    );
    let (status, _) = parse_response(&response)?;
    Ok((status, took))
}

/// A TCP initiator request on `stream`; its answer line, parsed.
async fn tcp_request(stream: &mut BufReader<TcpStream>, id: u32) -> anyhow::Result<Value> {
    let line = format!("{{\"id\":{id},\"route\":\"hello\",\"input\":{{\"name\":\"n\"}}}}\n");
    stream.get_mut().write_all(line.as_bytes()).await?;
    let mut answer = String::new();
    let n = tokio::time::timeout(ANSWERED_WITHIN, stream.read_line(&mut answer))
        .await
        .context("no answer in time")??;
    ensure!(n > 0, "the server closed the connection without an answer");
    let answer: Value = serde_json::from_str(&answer)?;
    ensure!(answer["id"] == id, "{answer}");
    Ok(answer)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_initiator_answers_while_slow_and_silent_clients_hold_every_slot() -> TestResult {
    let certs = tempfile::tempdir()?;
    let node = node(certs.path(), None).await?;
    let head: &[u8] = b"GET / HTTP/1.1\r\nhost: t\r\nx-slow: ";
    // First with some connections idle, then (on a fresh initiator) with only clients
    // trickling heads and bodies, so that nobody idle can make room.
    for (attacks, who) in [
        (
            &[Attack::Silent, Attack::TrickleHead, Attack::TrickleBody][..],
            "silent and trickling clients",
        ),
        (
            &[Attack::TrickleHead, Attack::TrickleBody][..],
            "trickling clients",
        ),
    ] {
        let config = HttpConfig {
            limits: limits(),
            ..HttpConfig::default()
        };
        let http = HttpInitiator::start(
            RouteCaller::new(&node, Duration::from_secs(2)),
            SocketAddr::new(loopback(1), 0),
            config,
        )
        .await?;
        let attackers = fill_slots(http.addr(), attacks, head).await?;
        let (status, took) = http_get(http.addr(), "/").await?;
        println!("HTTP initiator, every slot held by {who}: answered in {took:?}");
        assert_eq!(status, 200);
        drop(attackers);
        http.shutdown().await;
    }
    node.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_initiator_answers_while_slow_and_silent_clients_hold_every_slot() -> TestResult {
    let certs = tempfile::tempdir()?;
    let node = node(certs.path(), None).await?;
    let config = TcpConfig {
        limits: limits(),
        ..TcpConfig::default()
    };
    let tcp = TcpInitiator::start(
        RouteCaller::new(&node, Duration::from_secs(2)),
        SocketAddr::new(loopback(1), 0),
        config,
    )
    .await?;

    let attackers = fill_slots(
        tcp.addr(),
        &[Attack::Silent, Attack::TrickleHead],
        b"{\"route\":\"hello\",\"input\":",
    )
    .await?;
    let started = Instant::now();
    let mut stream = BufReader::new(connect_from(1, tcp.addr()).await?);
    let answer = tcp_request(&mut stream, 7).await?;
    let took = started.elapsed();
    println!(
        "TCP initiator, every slot held by silent and trickling clients: answered in {took:?}: {answer}"
    );

    drop(attackers);
    tcp.shutdown().await;
    node.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_port_answers_while_slow_and_silent_clients_hold_every_slot() -> TestResult {
    let certs = tempfile::tempdir()?;
    let node = node(certs.path(), Some(limits())).await?;
    let admin = node.admin_addr().context("an admin port")?;

    // As in the issue: a request line and nothing more, or nothing at all.
    let attackers = fill_slots(
        admin,
        &[Attack::Silent, Attack::Stall],
        b"GET /metrics HTTP/1.1\r\n",
    )
    .await?;
    let (status, took) = http_get(admin, "/metrics").await?;
    println!("admin port, every slot held by silent and slow clients: answered in {took:?}");
    assert_eq!(status, 200);

    drop(attackers);
    node.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_address_gets_its_share_of_the_slots_and_no_more() -> TestResult {
    let certs = tempfile::tempdir()?;
    let node = node(certs.path(), None).await?;
    let config = TcpConfig {
        limits: limits(),
        ..TcpConfig::default()
    };
    let share = config.limits.per_address();
    assert_eq!(share, 4);
    let tcp = TcpInitiator::start(
        RouteCaller::new(&node, Duration::from_secs(2)),
        SocketAddr::new(loopback(1), 0),
        config,
    )
    .await?;

    let mut held = Vec::new();
    for _ in 0..share {
        held.push(BufReader::new(connect_from(2, tcp.addr()).await?));
    }
    // One more from the same address is closed at once, though slots are free.
    let mut extra = connect_from(2, tcp.addr()).await?;
    let mut buf = [0u8; 16];
    let closed = tokio::time::timeout(CLOSED_WITHIN, extra.read(&mut buf))
        .await
        .context("a connection over its address's share stays open")?;
    assert!(
        matches!(closed, Ok(0) | Err(_)),
        "{closed:?}: the extra connection should be closed"
    );
    // Another address is served meanwhile, and the share's connections work.
    let mut other = BufReader::new(connect_from(3, tcp.addr()).await?);
    tcp_request(&mut other, 1).await?;
    for (i, stream) in (10..).zip(&mut held) {
        tcp_request(stream, i).await?;
    }

    tcp.shutdown().await;
    node.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_tcp_client_is_closed_after_the_idle_timeout() -> TestResult {
    let certs = tempfile::tempdir()?;
    let node = node(certs.path(), None).await?;
    let idle = Duration::from_millis(300);
    let config = TcpConfig {
        limits: ListenerLimits {
            idle_timeout: idle,
            ..limits()
        },
        ..TcpConfig::default()
    };
    let tcp = TcpInitiator::start(
        RouteCaller::new(&node, Duration::from_secs(2)),
        SocketAddr::new(loopback(1), 0),
        config,
    )
    .await?;

    let started = Instant::now();
    let mut silent = connect_from(2, tcp.addr()).await?;
    let mut buf = [0u8; 16];
    let closed = tokio::time::timeout(CLOSED_WITHIN, silent.read(&mut buf))
        .await
        .context("a silent connection stays open")?;
    let took = started.elapsed();
    println!("a silent TCP connection was closed after {took:?} (idle timeout {idle:?})");
    assert!(matches!(closed, Ok(0) | Err(_)), "{closed:?}");
    assert!(
        took >= idle,
        "closed after {took:?}, before the idle timeout"
    );

    tcp.shutdown().await;
    node.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_half_closes_and_never_reads_is_closed_after_the_write_timeout() -> TestResult
{
    let certs = tempfile::tempdir()?;
    let node = node(certs.path(), None).await?;
    let write_timeout = Duration::from_millis(500);
    // One connection per address: the client's second connection is let in only once the
    // server has closed the first.
    let config = TcpConfig {
        limits: ListenerLimits {
            max_per_address: Some(1),
            write_timeout,
            ..limits()
        },
        ..TcpConfig::default()
    };
    let tcp = TcpInitiator::start(
        RouteCaller::new(&node, Duration::from_secs(2)),
        SocketAddr::new(loopback(1), 0),
        config,
    )
    .await?;

    // Many small lines that each get a longer error answer, far more than the socket buffers
    // hold, from a client with a small receive buffer that never reads.
    const LINES: usize = 100_000;
    let socket = TcpSocket::new_v4()?;
    socket.set_recv_buffer_size(4096)?;
    // All the lines fit in the send buffer, so the half-close does not wait for the server.
    socket.set_send_buffer_size(1 << 20)?;
    socket.bind(SocketAddr::new(loopback(2), 0))?;
    let mut deaf = tokio::time::timeout(WAIT, socket.connect(tcp.addr())).await??;
    let started = Instant::now();
    tokio::time::timeout(WAIT, deaf.write_all(&b"x\n".repeat(LINES)))
        .await
        .context("sending the lines")??;
    deaf.shutdown().await?;

    // Wait for the server to give up on it: until then another connection from its address
    // is refused.
    let deadline = started + WAIT;
    loop {
        ensure!(
            Instant::now() < deadline,
            "the server never closed the connection that does not read"
        );
        let mut probe = BufReader::new(connect_from(2, tcp.addr()).await?);
        if tcp_request(&mut probe, 1).await.is_ok() {
            break;
        }
        // Refused: the first connection still holds the address's slot. Try again shortly.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!(
        "a client that does not read was closed within {:?} (write timeout {write_timeout:?})",
        started.elapsed()
    );
    // It was cut off: far fewer answers than lines reached it.
    let mut answers = 0usize;
    let mut reader = BufReader::new(deaf);
    let mut line = String::new();
    loop {
        line.clear();
        match tokio::time::timeout(WAIT, reader.read_line(&mut line)).await {
            Err(_) => bail!("reading the answers hangs"),
            Ok(Ok(0) | Err(_)) => break,
            Ok(Ok(_)) => answers += 1,
        }
    }
    println!("it got {answers} answers of {LINES}");
    assert!(
        answers < LINES,
        "every line was answered: the server waited"
    );

    tcp.shutdown().await;
    node.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_heads_and_bodies_that_trickle_are_cut_off() -> TestResult {
    let certs = tempfile::tempdir()?;
    let node = node(certs.path(), None).await?;
    let config = HttpConfig {
        limits: ListenerLimits {
            head_timeout: Duration::from_millis(300),
            body_grace: Duration::from_millis(300),
            min_body_rate: 1024,
            ..limits()
        },
        ..HttpConfig::default()
    };
    let http = HttpInitiator::start(
        RouteCaller::new(&node, Duration::from_secs(2)),
        SocketAddr::new(loopback(1), 0),
        config,
    )
    .await?;

    // A head trickling in (a byte every 200 ms, so the connection is never silent) and a body
    // trickling in at 5 bytes a second: both are closed, and nothing else frees their slots
    // (every other deadline is minutes away).
    let started = Instant::now();
    let attackers = fill_slots(
        http.addr(),
        &[Attack::TrickleHead, Attack::TrickleBody],
        b"GET / HTTP/1.1\r\nhost: t\r\nx-slow: ",
    )
    .await?;
    // The server closing them ends the attackers' tasks (a write fails, or a read ends).
    let all_closed = async {
        let mut attackers = attackers;
        while attackers.join_next().await.is_some() {}
    };
    tokio::time::timeout(CLOSED_WITHIN, all_closed)
        .await
        .context("slow heads and bodies keep their connections")?;
    println!(
        "{SLOTS} trickling heads and bodies were all closed within {:?}",
        started.elapsed()
    );

    http.shutdown().await;
    node.shutdown().await;
    Ok(())
}

/// Reads one HTTP/1.1 response with a `content-length` from a kept-alive connection; returns
/// its status.
async fn read_response(stream: &mut BufReader<TcpStream>) -> anyhow::Result<u16> {
    let mut status = None;
    let mut length = 0usize;
    loop {
        let mut line = String::new();
        let n = tokio::time::timeout(ANSWERED_WITHIN, stream.read_line(&mut line))
            .await
            .context("no answer in time")??;
        ensure!(n > 0, "the server closed the connection without an answer");
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if status.is_none() {
            status = line.split_whitespace().nth(1).map(str::parse).transpose()?;
        } else if let Some((name, value)) = line.split_once(':')
            && name.eq_ignore_ascii_case("content-length")
        {
            length = value.trim().parse()?;
        }
    }
    let mut body = vec![0u8; length];
    stream.read_exact(&mut body).await?;
    status.context("no status line")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kept_alive_http_connection_is_closed_once_idle_for_the_idle_timeout() -> TestResult {
    let certs = tempfile::tempdir()?;
    let node = node(certs.path(), None).await?;
    let idle = Duration::from_millis(300);
    let config = HttpConfig {
        limits: ListenerLimits {
            idle_timeout: idle,
            ..limits()
        },
        ..HttpConfig::default()
    };
    let http = HttpInitiator::start(
        RouteCaller::new(&node, Duration::from_secs(2)),
        SocketAddr::new(loopback(1), 0),
        config,
    )
    .await?;

    // Two requests on one connection: once each answer is out the connection is idle again
    // (not busy for good), so after the second it is closed for idleness.
    let mut stream = BufReader::new(connect_from(2, http.addr()).await?);
    for _ in 0..2 {
        stream
            .get_mut()
            .write_all(b"GET / HTTP/1.1\r\nhost: t\r\n\r\n")
            .await?;
        assert_eq!(read_response(&mut stream).await?, 200);
    }
    let answered = Instant::now();
    let mut rest = Vec::new();
    tokio::time::timeout(CLOSED_WITHIN, stream.read_to_end(&mut rest))
        .await
        .context("an idle keep-alive connection stays open")??;
    println!(
        "an idle keep-alive connection was closed {:?} after its last answer (idle timeout {idle:?})",
        answered.elapsed()
    );
    assert!(rest.is_empty());

    http.shutdown().await;
    node.shutdown().await;
    Ok(())
}
