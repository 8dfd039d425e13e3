//! Input that cannot be what the route needs: the caller's error, said as such (HTTP 400, a
//! `bad_request` line) with the decoder's words, never blamed on the servers (502).

use std::net::SocketAddr;

use anyhow::Context as _;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader};

use crate::common::{Cluster, TestResult, WAIT, http};

/// Sends `line` to a TCP initiator and reads its one answer line.
async fn tcp_answer(addr: SocketAddr, line: &str) -> anyhow::Result<Value> {
    let stream = tokio::net::TcpStream::connect(addr).await?;
    let (read, mut write) = stream.into_split();
    write.write_all(format!("{line}\n").as_bytes()).await?;
    let mut answer = String::new();
    tokio::time::timeout(WAIT, BufReader::new(read).read_line(&mut answer))
        .await
        .context("no answer line")??;
    serde_json::from_str(&answer).with_context(|| format!("answer {answer:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_typed_body_is_the_callers_error_with_the_decoders_message() -> TestResult {
    let cluster = Cluster::start().await?;
    let web = cluster.initiator("http", &[]).await?;
    let tcp = cluster.initiator("tcp", &[]).await?;
    let web_addr = web.addr("http")?;

    // The route works with input of the right shape, so what follows is about the input.
    let (status, body) = http(
        web_addr,
        "POST",
        "/v1/routes/strict",
        br#"{"name":"World"}"#,
    )
    .await?;
    assert_eq!(
        (status, body.trim()),
        (200, r#"{"greeting":"Hello World"}"#)
    );

    for (input, decoder_says) in [
        (
            r#"{"name": 5}"#,
            "invalid type: integer `5`, expected a string",
        ),
        ("[1]", "invalid type: integer `1`, expected a string"),
    ] {
        let (status, body) = http(web_addr, "POST", "/v1/routes/strict", input.as_bytes()).await?;
        assert_eq!(status, 400, "{input}: {body}");
        let error = &serde_json::from_str::<Value>(&body)?["error"];
        assert_eq!(error["kind"], "bad_request", "{body}");
        let message = error["message"].as_str().context("message")?;
        assert!(message.contains(decoder_says), "{input}: {message}");
        assert!(
            message.contains("greeter.strict cannot take this input"),
            "{message}"
        );

        let line = format!(r#"{{"id": 7, "route": "strict", "input": {input}}}"#);
        let answer = tcp_answer(tcp.addr("tcp")?, &line).await?;
        assert_eq!(answer["id"], 7, "{answer}");
        assert_eq!(answer["error"]["kind"], "bad_request", "{answer}");
        let message = answer["error"]["message"].as_str().context("message")?;
        assert!(message.contains(decoder_says), "{input}: {message}");
    }

    drop((web, tcp));
    cluster.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_route_in_the_url_is_percent_decoded_once_and_checked() -> TestResult {
    let cluster = Cluster::start().await?;
    let web = cluster.initiator("http", &[]).await?;
    let addr = web.addr("http")?;

    let (status, body) = http(addr, "POST", "/v1/routes/hel%6co", br#"{"name":"Pct"}"#).await?;
    assert_eq!((status, body.trim()), (200, r#"{"greeting":"Hello Pct"}"#));

    // The prefix comes off once: what is left is no route name, and does not run `hello`.
    for path in [
        "/v1/routes//v1/routes/hello",
        "/v1/routes/a%2Fb",
        "/v1/routes/",
    ] {
        let (status, body) = http(addr, "POST", path, b"{}").await?;
        assert_eq!(status, 400, "{path}: {body}");
        let error = &serde_json::from_str::<Value>(&body)?["error"];
        assert_eq!(error["kind"], "bad_request", "{path}: {body}");
        let message = error["message"].as_str().context("message")?;
        assert!(message.contains("invalid route name"), "{path}: {message}");
    }

    drop(web);
    cluster.stop().await;
    Ok(())
}
