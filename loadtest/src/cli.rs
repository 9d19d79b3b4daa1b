//! `outrigger load`: the command-line face of the generator. Turns flags into a [`LoadSpec`],
//! builds its own tokio runtime (one thread unless told otherwise, so the generator can be
//! pinned to a core), runs, and prints a summary or the JSON report.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use bytes::Bytes;
use http::Method;

use crate::{LoadSpec, Mode, Protocol};

/// Exit code for bad arguments and runs that could not start (clap uses it for usage errors).
const BAD_ARGUMENTS: u8 = 2;

/// Generate HTTP load against one URL.
#[derive(clap::Args, Debug)]
pub struct LoadArgs {
    /// Target URL, http://host[:port]/path?query (https is not supported)
    pub url: String,
    /// Request method
    #[arg(short = 'X', long, default_value = "GET", value_parser = parse_method)]
    pub method: Method,
    /// Request header "Name: value" (repeatable)
    #[arg(short = 'H', long = "header", value_parser = parse_header)]
    pub headers: Vec<(String, String)>,
    /// Request body
    #[arg(short = 'd', long, conflicts_with = "data_file")]
    pub data: Option<String>,
    /// Request body read from a file
    #[arg(long, value_name = "PATH")]
    pub data_file: Option<PathBuf>,
    /// Speak HTTP/2 with prior knowledge (h2c) instead of HTTP/1.1
    #[arg(long)]
    pub http2: bool,
    /// Connections to open
    #[arg(short = 'c', long, default_value_t = 16, value_parser = clap::value_parser!(u64).range(1..))]
    pub connections: u64,
    /// Open loop at this many requests/second in total (latency counted from each request's
    /// scheduled time); without it, closed loop at full speed
    #[arg(long, value_name = "REQ_PER_SEC")]
    pub rate: Option<f64>,
    /// Load sent before measuring, e.g. 2s, 500ms
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    pub warmup: Duration,
    /// Measured period after the warm-up, e.g. 10s, 1m
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Per-request timeout
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub timeout: Duration,
    /// Print the report as JSON on stdout instead of the summary
    #[arg(long)]
    pub json: bool,
    /// Tokio worker threads
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..))]
    pub threads: u64,
}

/// Runs the load `args` describe and prints the result. Exit code 0 when the run completed (HTTP
/// errors are counted, not fatal), 2 when the arguments are wrong or the run could not start.
pub fn run(args: LoadArgs) -> ExitCode {
    let spec = match spec(&args) {
        Ok(spec) => spec,
        Err(message) => return fail(&message),
    };
    // One thread means the calling thread: nothing else to schedule, nothing to pin apart.
    let runtime = if args.threads == 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(args.threads as usize)
            .enable_all()
            .build()
    };
    let runtime = match runtime {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("outrigger load: cannot start the tokio runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let report = match runtime.block_on(crate::run(&spec)) {
        Ok(report) => report,
        Err(e) => return fail(&e.to_string()),
    };
    if args.json {
        match serde_json::to_string_pretty(&report) {
            Ok(json) => println!("{json}"),
            Err(e) => {
                eprintln!("outrigger load: cannot encode the report: {e}");
                return ExitCode::FAILURE;
            }
        }
    } else {
        print!("{} {}\n{}", spec.method, spec.url, report.summary());
    }
    ExitCode::SUCCESS
}

fn spec(args: &LoadArgs) -> Result<LoadSpec, String> {
    let body = match (&args.data, &args.data_file) {
        (Some(data), _) => Bytes::from(data.clone()),
        (None, Some(path)) => std::fs::read(path)
            .map(Bytes::from)
            .map_err(|e| format!("--data-file {}: {e}", path.display()))?,
        (None, None) => Bytes::new(),
    };
    Ok(LoadSpec {
        url: args.url.clone(),
        method: args.method.clone(),
        headers: args.headers.clone(),
        body,
        protocol: if args.http2 {
            Protocol::Http2
        } else {
            Protocol::Http1
        },
        connections: usize::try_from(args.connections)
            .map_err(|_| format!("--connections {} is too many", args.connections))?,
        mode: match args.rate {
            Some(rate) => Mode::OpenLoop { rate },
            None => Mode::ClosedLoop,
        },
        warmup: args.warmup,
        duration: args.duration,
        timeout: args.timeout,
        progress: true,
    })
}

fn fail(message: &str) -> ExitCode {
    eprintln!("outrigger load: {message}");
    ExitCode::from(BAD_ARGUMENTS)
}

fn parse_method(text: &str) -> Result<Method, String> {
    Method::from_bytes(text.as_bytes()).map_err(|_| format!("{text:?} is not an HTTP method"))
}

fn parse_header(text: &str) -> Result<(String, String), String> {
    match text.split_once(':') {
        Some((name, value)) if !name.trim().is_empty() => {
            Ok((name.trim().to_string(), value.trim().to_string()))
        }
        _ => Err(format!(
            "{text:?} is not a header; expected \"Name: value\""
        )),
    }
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text)
        .map_err(|e| format!("{text:?} is not a duration ({e}); expected e.g. 500ms, 10s, 1m"))
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        load: LoadArgs,
    }

    fn parse(args: &[&str]) -> Result<LoadArgs, clap::Error> {
        Cli::try_parse_from(std::iter::once("load").chain(args.iter().copied())).map(|c| c.load)
    }

    #[test]
    fn defaults_are_closed_loop_http1_16_connections_2s_warmup_10s() {
        let spec = spec(&parse(&["http://127.0.0.1:8080/"]).unwrap()).unwrap();
        assert_eq!(spec.mode, Mode::ClosedLoop);
        assert_eq!(spec.protocol, Protocol::Http1);
        assert_eq!(spec.method, Method::GET);
        assert_eq!(spec.connections, 16);
        assert_eq!(spec.warmup, Duration::from_secs(2));
        assert_eq!(spec.duration, Duration::from_secs(10));
        assert_eq!(spec.timeout, Duration::from_secs(10));
    }

    #[test]
    fn rate_headers_body_and_durations_are_taken_as_given() {
        let args = parse(&[
            "-X",
            "POST",
            "-H",
            "x-a: 1",
            "-H",
            "x-b:2",
            "-d",
            "hello",
            "--http2",
            "-c",
            "4",
            "--rate",
            "500",
            "--warmup",
            "500ms",
            "--duration",
            "1m",
            "--timeout",
            "3s",
            "http://h/p",
        ])
        .unwrap();
        let spec = spec(&args).unwrap();
        assert_eq!(spec.method, Method::POST);
        assert_eq!(
            spec.headers,
            vec![("x-a".into(), "1".into()), ("x-b".into(), "2".into())]
        );
        assert_eq!(spec.body, Bytes::from_static(b"hello"));
        assert_eq!(spec.protocol, Protocol::Http2);
        assert_eq!(spec.connections, 4);
        assert_eq!(spec.mode, Mode::OpenLoop { rate: 500.0 });
        assert_eq!(spec.warmup, Duration::from_millis(500));
        assert_eq!(spec.duration, Duration::from_secs(60));
        assert_eq!(spec.timeout, Duration::from_secs(3));
    }

    #[test]
    fn header_without_colon_is_refused() {
        assert!(parse(&["-H", "nocolon", "http://h/"]).is_err());
    }

    #[test]
    fn zero_connections_is_refused() {
        assert!(parse(&["-c", "0", "http://h/"]).is_err());
    }

    #[test]
    fn data_and_data_file_together_are_refused() {
        assert!(parse(&["-d", "x", "--data-file", "f", "http://h/"]).is_err());
    }

    #[test]
    fn missing_data_file_is_an_error_naming_the_flag() {
        let args = parse(&["--data-file", "/nonexistent/body", "http://h/"]).unwrap();
        assert!(spec(&args)
            .unwrap_err()
            .starts_with("--data-file /nonexistent/body"));
    }
}
