//! `coremq-bench`: run one workload against one broker and report.
//!
//! ```text
//! coremq-bench --proto coremq --addr 127.0.0.1:6747 --workload fanout --broker-pid 1234 --json
//! coremq-bench --proto coremq --addr 127.0.0.1:6747 --payload 1024 --messages 600000 --unwindowed
//! coremq-bench --proto coremq --coremq-seq --no-ack --workload 4x4
//! coremq-bench --proto nats --jetstream --addr 127.0.0.1:4222 --workload 4x4
//! COREMQ_BENCH_PASSWORD=… coremq-bench --proto coremq --coremq-user bench --workload 4x4
//! coremq-bench --proto coremq --tls --ca ca.pem --addr 127.0.0.1:6748 --workload fanout
//! coremq-bench --proto nats --tls --ca ca.pem --server-name localhost --addr 127.0.0.1:4222
//! coremq-bench --proto nats-ws --addr 127.0.0.1:8080 --workload pingpong
//! coremq-bench --proto memcached --addr 127.0.0.1:11211 --workload kv --label coremq-mc
//! coremq-bench --proto redis --addr 127.0.0.1:6379 --workload kv
//! ```
//!
//! Over TLS (`--tls --ca FILE`), CoreMQ is reached on its `tls_port` (TLS from
//! the first byte) and nats-server on a port with a `tls` block (its INFO line
//! in clear, then the client upgrades); the certificate is checked against the
//! CA file and `--server-name` (default: the host of `--addr`). Both brokers'
//! connections use the same client code (`conn::link`), so the ratios between
//! them over TLS compare brokers, not TLS clients.
//!
//! The `kv` workload (issue 27) preloads `--kv-keys` keys, then runs a mix of
//! gets and sets pipelined `--kv-depth` deep on `--kv-connections`
//! connections, over memcached's text protocol (memcached, CoreMQ's
//! `memcached_port`) or RESP (redis-server).
//!
//! Against a CoreMQ with access control (`users_file`), every connection logs in
//! with `--coremq-user` and `--coremq-password` (or `$COREMQ_BENCH_PASSWORD`), or
//! `--coremq-token` (or `$COREMQ_BENCH_TOKEN`), before anything else. Every queue
//! the workloads name starts with `bench.` (ping-pong uses connection ids), so a
//! user with `publish`, `subscribe` and `history = bench.*` can run them all; the
//! placement readings (`coremq_status`) need `monitor = true` too, and without it
//! the report notes that the placement is unknown.
//!
//! Throughput runs keep an end-to-end window by default (`--window-kib`, 4 MiB
//! per publisher); `--unwindowed` (= `--window-kib 0`) has the publishers write
//! as fast as TCP takes the bytes, and the report then counts what the broker
//! lost and which subscribers it cut off.

use clap::{Parser, ValueEnum};
use coremq_bench::conn::Credentials;
use coremq_bench::placement;
use coremq_bench::wire::kv::KvProto;
use coremq_bench::workload::idle::{self, IdleSpec};
use coremq_bench::workload::kv;
use coremq_bench::workload::pingpong::{self, PingPongSpec};
use coremq_bench::workload::pubsub::{self, PubSubSpec};
use coremq_bench::workload::Progress;
use coremq_bench::{BenchError, Proto, Report, Target, TlsClient};
use std::process::ExitCode;
use std::time::Duration;

#[derive(Clone, Copy, Debug, ValueEnum)]
enum ProtoArg {
    /// CoreMQ TCP
    Coremq,
    /// CoreMQ WebSocket (`--addr` is the [CoreWS] port)
    CoremqWs,
    /// nats-server
    Nats,
    /// nats-server over WebSocket (`--addr` is its `websocket` port, with `no_tls: true`)
    NatsWs,
    /// redis-server (pub/sub; GET/SET in the kv workload)
    Redis,
    /// memcached's text protocol (memcached, CoreMQ's memcached_port): kv workload only
    Memcached,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Workload {
    /// 1 publisher → 1 subscriber
    #[value(name = "1to1")]
    OneToOne,
    /// 1 publisher → `--fanout` subscribers of one queue
    Fanout,
    /// `--publishers` publishers, each to its own queue with one subscriber (default 4×4)
    #[value(name = "4x4")]
    Queues,
    /// two clients bouncing one message; round-trip percentiles
    Pingpong,
    /// `--connections` idle subscribers; broker memory per connection
    Idle,
    /// key-value mix (gets and sets, pipelined); --proto memcached or redis
    Kv,
}

/// Load generator for CoreMQ, nats-server and redis-server. Every run is bounded by
/// --messages (or --round-trips, --connections) and by --max-seconds.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// Protocol of the broker under test.
    #[arg(long, value_enum)]
    proto: ProtoArg,
    /// Broker address (loopback), host:port.
    #[arg(long, default_value = "127.0.0.1:6747")]
    addr: String,
    /// Workload.
    #[arg(long, value_enum, default_value = "1to1")]
    workload: Workload,
    /// CoreMQ (TCP or WebSocket): publish with `{"coremq_options": {"ack": false}}`
    /// (no OK per publish, as NATS publishes get none).
    #[arg(long)]
    no_ack: bool,
    /// CoreMQ TCP: every connection sends `{"coremq_options": {"seq": true}}`, so
    /// every delivery carries `"coremq_seq": N` (with --no-ack, one options
    /// request with both). The report counts the numbered deliveries.
    #[arg(long)]
    coremq_seq: bool,
    /// NATS: JetStream. Throughput runs (re)create a file-storage stream
    /// `COREMQ_BENCH` on the run's subjects (`$JS.API.STREAM.CREATE`) and every
    /// publish carries a reply subject, so that each is acknowledged by the
    /// stream (a PubAck, counted as CoreMQ's `OK: Message sent` is and held to
    /// the same window); subscribers stay core-NATS subscriptions. The report
    /// says how many messages the stream held; the stream is deleted after the
    /// run. The server must run with JetStream (`nats-server -js -sd DIR`).
    #[arg(long)]
    jetstream: bool,
    /// Payload bytes per message (at least 16: the marker).
    #[arg(long, default_value_t = 128)]
    payload: usize,
    /// Messages per publisher.
    #[arg(long, default_value_t = 500_000)]
    messages: u64,
    /// Subscribers of the one queue in the fanout workload.
    #[arg(long, default_value_t = 10)]
    fanout: usize,
    /// Publishers (= queues) in the 4x4 workload.
    #[arg(long, default_value_t = 4)]
    publishers: usize,
    /// Round trips measured in the pingpong workload.
    #[arg(long, default_value_t = 20_000)]
    round_trips: u64,
    /// Connections in the idle workload.
    #[arg(long, default_value_t = 10_000)]
    connections: u64,
    /// Publishing (or opening) stops after this many seconds.
    #[arg(long, default_value_t = 30.0)]
    max_seconds: f64,
    /// Seconds to wait for stragglers after the last publish before counting the rest lost
    /// (--unwindowed: seconds without any delivery, after the last publish).
    #[arg(long, default_value_t = 5.0)]
    drain_seconds: f64,
    /// End-to-end window per publisher, KiB of messages published but not yet received
    /// (0: none, as --unwindowed).
    #[arg(long, default_value_t = 4096)]
    window_kib: usize,
    /// Throughput workloads: no end-to-end window. Publishers write as fast as their
    /// sockets take the bytes (their replies, CoreMQ's OKs and Redis's integers, are read
    /// by a thread of their own); subscribers read as fast as they can. The run ends when
    /// every subscriber has every message, after --drain-seconds without a delivery once
    /// publishing is done, or at --max-seconds + --drain-seconds. The report counts lost
    /// messages and disconnected subscribers (EOF or a slow-consumer error); its msg/s
    /// counts delivered messages only. Same as --window-kib 0.
    #[arg(long, conflicts_with = "window_kib")]
    unwindowed: bool,
    /// PID of the broker, for its CPU time (/proc/PID/stat) and peak RSS (/proc/PID/status).
    #[arg(long)]
    broker_pid: Option<u32>,
    /// WebSocket path.
    #[arg(long, default_value = "/ws")]
    ws_path: String,
    /// Connect over TLS (--proto coremq: its tls_port; --proto nats: a
    /// nats-server with a tls block). Needs --ca.
    #[arg(long)]
    tls: bool,
    /// PEM file of the CA certificate(s) the broker's certificate must chain to (with --tls).
    #[arg(long, value_name = "FILE")]
    ca: Option<std::path::PathBuf>,
    /// The name the broker's certificate must carry (with --tls; default: the host of --addr).
    #[arg(long, value_name = "NAME")]
    server_name: Option<String>,
    /// CoreMQ (TCP and WebSocket): log every connection in as USER
    /// (`coremq_auth`) before anything else; needs --coremq-password.
    #[arg(long, value_name = "USER", conflicts_with = "coremq_token")]
    coremq_user: Option<String>,
    /// The password of --coremq-user. Prefer the environment variable: a
    /// command-line argument is visible to every user of the machine.
    #[arg(
        long,
        env = "COREMQ_BENCH_PASSWORD",
        hide_env_values = true,
        value_name = "PASSWORD"
    )]
    coremq_password: Option<String>,
    /// CoreMQ (TCP and WebSocket): log every connection in with this token (a
    /// JWT, e.g. from `coremq-cli token`) instead of a user and password.
    #[arg(
        long,
        env = "COREMQ_BENCH_TOKEN",
        hide_env_values = true,
        value_name = "JWT"
    )]
    coremq_token: Option<String>,
    /// kv: distinct keys (all stored before the measured mix).
    #[arg(long, default_value_t = 100_000)]
    kv_keys: u64,
    /// kv: bytes per value.
    #[arg(long, default_value_t = 1024)]
    kv_value: usize,
    /// kv: requests in flight per connection.
    #[arg(long, default_value_t = 32)]
    kv_depth: usize,
    /// kv: connections (one thread each).
    #[arg(long, default_value_t = 4)]
    kv_connections: usize,
    /// kv: operations in the measured mix, all connections together.
    #[arg(long, default_value_t = 2_000_000)]
    kv_ops: u64,
    /// kv: percent of gets in the mix (the rest are sets).
    #[arg(long, default_value_t = 90)]
    kv_get_percent: u32,
    /// kv: the name the report gives the server (default: the protocol's).
    #[arg(long)]
    label: Option<String>,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
    /// No progress bar (also off when stderr is not a terminal or CI is set).
    #[arg(long)]
    quiet: bool,
}

fn secs(s: f64) -> Duration {
    Duration::from_secs_f64(s.clamp(0.0, 86_400.0))
}

/// The credentials the options give, if any.
fn credentials(args: &Args) -> Result<Option<Credentials>, BenchError> {
    match (&args.coremq_user, &args.coremq_password, &args.coremq_token) {
        (Some(_), _, Some(_)) => Err(BenchError::Usage(
            "--coremq-user and --coremq-token (or $COREMQ_BENCH_TOKEN): give one of them".into(),
        )),
        (Some(user), Some(password), None) => Ok(Some(Credentials::Password {
            user: user.clone(),
            password: password.clone(),
        })),
        (Some(_), None, None) => Err(BenchError::Usage(
            "--coremq-user needs --coremq-password (or $COREMQ_BENCH_PASSWORD)".into(),
        )),
        (None, Some(_), None) => Err(BenchError::Usage(
            "--coremq-password (or $COREMQ_BENCH_PASSWORD) needs --coremq-user".into(),
        )),
        (None, _, Some(token)) => Ok(Some(Credentials::Token(token.clone()))),
        (None, None, None) => Ok(None),
    }
}

/// The TLS client the options ask for, if any.
fn tls_client(args: &Args, proto: Proto) -> Result<Option<TlsClient>, BenchError> {
    if !args.tls {
        if args.ca.is_some() || args.server_name.is_some() {
            return Err(BenchError::Usage(
                "--ca and --server-name apply with --tls only".into(),
            ));
        }
        return Ok(None);
    }
    if !matches!(proto, Proto::CoreMq | Proto::Nats) {
        return Err(BenchError::Usage(
            "--tls applies to --proto coremq and nats only".into(),
        ));
    }
    let Some(ca) = &args.ca else {
        return Err(BenchError::Usage(
            "--tls needs --ca FILE (the CA certificate the broker's certificate chains to)".into(),
        ));
    };
    let mut c = TlsClient::from_ca_file(ca)?;
    c.server_name = args.server_name.clone();
    // Checked now, so that a bad name is a usage error and not a failed run.
    c.name_for(&args.addr)?;
    Ok(Some(c))
}

/// The kv workload (its own report).
fn run_kv(args: &Args) -> Result<kv::KvReport, BenchError> {
    if args.tls || args.ca.is_some() || args.server_name.is_some() {
        return Err(BenchError::Usage(
            "--tls, --ca and --server-name do not apply to --workload kv".into(),
        ));
    }
    let proto = match args.proto {
        ProtoArg::Memcached => KvProto::Memcached,
        ProtoArg::Redis => KvProto::Resp,
        _ => return Err(BenchError::Usage(
            "--workload kv needs --proto memcached (CoreMQ's memcached_port, memcached) or redis"
                .into(),
        )),
    };
    let spec = kv::KvSpec {
        proto,
        addr: args.addr.clone(),
        label: args.label.clone().unwrap_or_else(|| proto.name().into()),
        connections: args.kv_connections,
        depth: args.kv_depth,
        keys: args.kv_keys,
        value: args.kv_value,
        get_percent: args.kv_get_percent,
        ops: args.kv_ops,
        max_time: secs(args.max_seconds),
    };
    kv::run(&spec, args.broker_pid)
}

fn run(args: &Args) -> Result<Report, BenchError> {
    let proto = match args.proto {
        ProtoArg::Coremq => Proto::CoreMq,
        ProtoArg::CoremqWs => Proto::CoreMqWs,
        ProtoArg::Nats => Proto::Nats,
        ProtoArg::NatsWs => Proto::NatsWs,
        ProtoArg::Redis => Proto::Redis,
        ProtoArg::Memcached => {
            return Err(BenchError::Usage(
                "--proto memcached applies to --workload kv only".into(),
            ))
        }
    };
    if args.no_ack && !matches!(proto, Proto::CoreMq | Proto::CoreMqWs) {
        return Err(BenchError::Usage(
            "--no-ack applies to --proto coremq and coremq-ws only".into(),
        ));
    }
    if args.coremq_seq && proto != Proto::CoreMq {
        return Err(BenchError::Usage(
            "--coremq-seq applies to --proto coremq only".into(),
        ));
    }
    if args.jetstream && proto != Proto::Nats {
        return Err(BenchError::Usage(
            "--jetstream applies to --proto nats only".into(),
        ));
    }
    if args.jetstream && matches!(args.workload, Workload::Pingpong | Workload::Idle) {
        return Err(BenchError::Usage(
            "--jetstream applies to the throughput workloads (1to1, fanout, 4x4) only".into(),
        ));
    }
    let tls = tls_client(args, proto)?;
    let auth = credentials(args)?;
    if auth.is_some() && !matches!(proto, Proto::CoreMq | Proto::CoreMqWs) {
        return Err(BenchError::Usage(
            "--coremq-user, --coremq-password and --coremq-token apply to --proto coremq and coremq-ws only"
                .into(),
        ));
    }
    let mut target = Target::new(proto, args.addr.clone());
    target.ack = !args.no_ack;
    target.seq = args.coremq_seq;
    target.ws_path = args.ws_path.clone();
    target.auth = auth;
    target.jetstream = args.jetstream;
    target.tls = tls;
    let progress = Progress::new(!args.quiet && !args.json);
    let pubsub = |name: &str, publishers: usize, subs: usize| {
        let mut s = PubSubSpec::new(name, publishers, subs);
        s.payload = args.payload;
        s.messages = args.messages;
        s.max_time = secs(args.max_seconds);
        s.drain = secs(args.drain_seconds);
        s.window_bytes = if args.unwindowed {
            0
        } else {
            args.window_kib << 10
        };
        s
    };
    let mut report = match args.workload {
        Workload::OneToOne => {
            let run = || pubsub::run(&target, &pubsub("1to1", 1, 1), args.broker_pid, &progress);
            if proto == Proto::CoreMq {
                // Which shards the run drew, from the broker's counters.
                placement::measured(&target, run)
            } else {
                run()
            }
        }
        Workload::Fanout | Workload::Queues => {
            let spec = if matches!(args.workload, Workload::Fanout) {
                pubsub(&format!("fanout1x{}", args.fanout), 1, args.fanout)
            } else {
                pubsub(&format!("{0}x{0}", args.publishers), args.publishers, 1)
            };
            let run = || pubsub::run(&target, &spec, args.broker_pid, &progress);
            if proto == Proto::CoreMq {
                // How many publishers, subscribers and queues each shard drew.
                let counts = (
                    spec.publishers,
                    spec.publishers * spec.subscribers_per_queue,
                    spec.publishers,
                );
                placement::measured_spread(&target, counts, run)
            } else {
                run()
            }
        }
        Workload::Pingpong => pingpong::run(
            &target,
            &PingPongSpec {
                payload: args.payload,
                round_trips: args.round_trips,
                max_time: secs(args.max_seconds),
                ..PingPongSpec::default()
            },
            args.broker_pid,
            &progress,
        ),
        Workload::Kv => unreachable!("main runs the kv workload"),
        Workload::Idle => idle::run(
            &target,
            &IdleSpec {
                connections: args.connections,
                max_time: secs(args.max_seconds),
                ..IdleSpec::default()
            },
            args.broker_pid,
            &progress,
        ),
    }?;
    if let Some(negotiated) = target.tls.as_ref().and_then(|t| t.negotiated()) {
        // What the brokers were held to: their TLS version and cipher suite.
        report.notes.push(format!("TLS: {negotiated}"));
    }
    Ok(report)
}

fn main() -> ExitCode {
    let args = Args::parse();
    if matches!(args.workload, Workload::Kv) {
        return match run_kv(&args) {
            Ok(r) if args.json => {
                println!("{}", r.to_json());
                ExitCode::SUCCESS
            }
            Ok(r) => {
                print!("{}", r.to_text());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("coremq-bench: {e}");
                ExitCode::FAILURE
            }
        };
    }
    let report = match run(&args) {
        Ok(r) => r,
        Err(BenchError::Unavailable(why)) => {
            let label = match args.proto {
                ProtoArg::Coremq if args.coremq_seq && args.no_ack => "coremq-seq-noack",
                ProtoArg::Coremq if args.coremq_seq => "coremq-seq",
                ProtoArg::Coremq if args.no_ack => "coremq-noack",
                ProtoArg::Coremq => "coremq",
                ProtoArg::CoremqWs if args.no_ack => "coremq-ws-noack",
                ProtoArg::CoremqWs => "coremq-ws",
                ProtoArg::Nats if args.jetstream => "nats-js",
                ProtoArg::Nats => "nats",
                ProtoArg::NatsWs => "nats-ws",
                ProtoArg::Redis => "redis",
                ProtoArg::Memcached => "memcached",
            };
            let label = if args.tls {
                format!("{label}-tls")
            } else {
                label.to_string()
            };
            let workload = args
                .workload
                .to_possible_value()
                .map(|v| v.get_name().to_string());
            Report::skipped(label, workload.unwrap_or_default(), why)
        }
        Err(e) => {
            eprintln!("coremq-bench: {e}");
            return ExitCode::FAILURE;
        }
    };
    if args.json {
        println!("{}", report.to_json());
    } else {
        print!("{}", report.to_text());
    }
    ExitCode::SUCCESS
}
