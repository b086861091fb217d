//! The result of one run, as JSON (for scripts) and as text (for people).

use crate::latency::Summary;
use crate::placement::{Placement, Spread};
use serde_json::{json, Value};

/// The broker's resource use during a run (from `/proc`, when its PID was given).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct BrokerUse {
    /// CPU seconds (user + system) the broker spent during the run.
    pub cpu_s: f64,
    /// CPU seconds per million delivered messages.
    pub cpu_s_per_million: f64,
    /// Resident set size at the end, KiB.
    pub rss_kib: u64,
    /// Peak resident set size of the broker's life so far (VmHWM), KiB.
    pub hwm_kib: u64,
}

/// The load generator's own CPU use during a run: it shares the machine with
/// the broker, so what it spends is not available to the broker.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct GeneratorUse {
    /// CPU seconds (user + system, all threads) `coremq-bench` spent during the run.
    pub cpu_s: f64,
    /// CPU seconds per million delivered messages.
    pub cpu_s_per_million: f64,
}

/// Figures of the idle-connections workload.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct IdleFigures {
    /// Connections opened and subscribed.
    pub connections: u64,
    /// Broker RSS growth while they were opened, KiB.
    pub rss_delta_kib: i64,
    /// That growth per connection, bytes.
    pub bytes_per_connection: f64,
    /// Seconds it took to open and subscribe them all.
    pub setup_s: f64,
}

/// One run's result.
#[derive(Clone, Debug, Default)]
pub struct Report {
    /// Broker label (`coremq`, `coremq-noack`, `coremq-ws`, `nats`, `redis`).
    pub target: String,
    /// Workload name.
    pub workload: String,
    /// Payload bytes per message.
    pub payload: usize,
    /// Publishing connections.
    pub publishers: usize,
    /// Subscribing connections (all queues together).
    pub subscribers: usize,
    /// Messages published.
    pub published: u64,
    /// Publishes acknowledged by the broker (where it acknowledges).
    pub acked: u64,
    /// Acknowledged publishes per second, until the last acknowledgement
    /// (0 where publishes are not acknowledged).
    pub acked_per_s: f64,
    /// NATS JetStream (`--jetstream`): messages the run's stream held at the
    /// end (`None` for other targets).
    pub stored: Option<u64>,
    /// Deliveries that should have happened (published × subscribers of the queue).
    pub expected: u64,
    /// Deliveries counted.
    pub delivered: u64,
    /// Deliveries that never came (must be 0).
    pub lost: u64,
    /// Subscriber connections the broker cut off: closed (EOF, reset) or told
    /// they were slow consumers (must be 0).
    pub disconnected: u64,
    /// Throughput runs: publishers kept no end-to-end window (`--unwindowed`).
    pub unwindowed: bool,
    /// Throughput runs with a window: its size per publisher, KiB.
    pub window_kib: usize,
    /// Deliveries that came out of order or twice.
    pub out_of_order: u64,
    /// Deliveries that carried `coremq_seq` (CoreMQ with `--coremq-seq`: all of
    /// them; otherwise none).
    pub numbered: u64,
    /// Error frames the broker sent.
    pub errors: u64,
    /// The first of them.
    pub first_error: Option<String>,
    /// Seconds from the first publish to the last delivery.
    pub elapsed_s: f64,
    /// Deliveries per second.
    pub delivered_per_s: f64,
    /// Publishes per second (until the last was written, and acknowledged if acked).
    pub publish_per_s: f64,
    /// Delivered payload megabytes (10^6) per second.
    pub mb_per_s: f64,
    /// Latency: publish-to-delivery (throughput runs) or round trip (ping-pong), µs.
    pub latency_us: Option<Summary>,
    /// What `latency_us` measures.
    pub latency_kind: &'static str,
    /// Broker resource use.
    pub broker: Option<BrokerUse>,
    /// The load generator's own CPU use.
    pub generator: Option<GeneratorUse>,
    /// Idle-connection figures.
    pub idle: Option<IdleFigures>,
    /// CoreMQ 1→1 runs: the shards of the publisher, the subscriber and the queue.
    pub placement: Option<Placement>,
    /// CoreMQ fan-out and 4×4 runs: how many publishers, subscribers and queues
    /// each shard had.
    pub spread: Option<Spread>,
    /// The run hit `--max-seconds` before sending everything.
    pub stopped_by_time: bool,
    /// Why the run was skipped (e.g. no WebSocket listener); nothing else is valid.
    pub skipped: Option<String>,
    /// Anything else worth knowing.
    pub notes: Vec<String>,
}

impl Report {
    /// A report that says the run could not be done, and why.
    pub fn skipped(target: String, workload: String, why: String) -> Report {
        Report {
            target,
            workload,
            skipped: Some(why),
            ..Report::default()
        }
    }

    /// Machine-readable form (`--json`).
    pub fn to_json(&self) -> Value {
        let mut v = json!({
            "target": self.target,
            "workload": self.workload,
            "skipped": self.skipped,
        });
        if self.skipped.is_some() {
            return v;
        }
        let m = v.as_object_mut().expect("object");
        let more = json!({
            "payload": self.payload,
            "publishers": self.publishers,
            "subscribers": self.subscribers,
            "published": self.published,
            "acked": self.acked,
            "acked_per_s": self.acked_per_s,
            "stored": self.stored,
            "expected": self.expected,
            "delivered": self.delivered,
            "lost": self.lost,
            "disconnected": self.disconnected,
            "unwindowed": self.unwindowed,
            "window_kib": self.window_kib,
            "out_of_order": self.out_of_order,
            "numbered": self.numbered,
            "errors": self.errors,
            "first_error": self.first_error,
            "elapsed_s": self.elapsed_s,
            "delivered_per_s": self.delivered_per_s,
            "publish_per_s": self.publish_per_s,
            "mb_per_s": self.mb_per_s,
            "latency_kind": self.latency_kind,
            "latency_us": self.latency_us.map(|s| s.to_json(1.0)),
            "broker": self.broker.map(|b| json!({
                "cpu_s": b.cpu_s,
                "cpu_s_per_million": b.cpu_s_per_million,
                "rss_kib": b.rss_kib,
                "hwm_kib": b.hwm_kib,
            })),
            "generator": self.generator.map(|g| json!({
                "cpu_s": g.cpu_s,
                "cpu_s_per_million": g.cpu_s_per_million,
            })),
            "idle": self.idle.map(|i| json!({
                "connections": i.connections,
                "rss_delta_kib": i.rss_delta_kib,
                "bytes_per_connection": i.bytes_per_connection,
                "setup_s": i.setup_s,
            })),
            "placement": self.placement.map(|p| json!({
                "publisher": p.publisher,
                "subscriber": p.subscriber,
                "owner": p.owner,
                "label": p.label(),
            })),
            "spread": self.spread.as_ref().map(|p| json!({
                "publishers": p.publishers,
                "subscribers": p.subscribers,
                "queues": p.queues,
                "label": p.label(),
            })),
            "stopped_by_time": self.stopped_by_time,
            "notes": self.notes,
        });
        if let Value::Object(more) = more {
            m.extend(more);
        }
        v
    }

    /// Human-readable form.
    pub fn to_text(&self) -> String {
        let mut s = format!("{} / {}", self.target, self.workload);
        if let Some(why) = &self.skipped {
            s.push_str(&format!(": SKIPPED — {why}\n"));
            return s;
        }
        s.push_str(&format!(
            " ({} B, {} pub, {} sub{})\n",
            self.payload,
            self.publishers,
            self.subscribers,
            if self.unwindowed { ", unwindowed" } else { "" }
        ));
        if let Some(i) = &self.idle {
            s.push_str(&format!(
                "  connections {}  broker RSS +{} KiB  = {:.0} B/connection  (set-up {:.1} s)\n",
                i.connections, i.rss_delta_kib, i.bytes_per_connection, i.setup_s
            ));
        } else {
            s.push_str(&format!(
                "  delivered {} of {} in {:.3} s: {:.0} msg/s, {:.1} MB/s; published {} at {:.0} msg/s\n",
                self.delivered,
                self.expected,
                self.elapsed_s,
                self.delivered_per_s,
                self.mb_per_s,
                self.published,
                self.publish_per_s
            ));
            if self.lost > 0 || self.disconnected > 0 {
                // Loud, so that a short run is not read as a fast one.
                let pct = if self.expected > 0 {
                    100.0 * self.lost as f64 / self.expected as f64
                } else {
                    0.0
                };
                s.push_str(&format!(
                    "  LOST {} of {} deliveries ({pct:.1} %); {} subscriber(s) disconnected by the \
                     broker; msg/s above counts delivered messages only\n",
                    self.lost, self.expected, self.disconnected
                ));
            }
            s.push_str(&format!(
                "  lost {}  out-of-order {}  errors {}{}\n",
                self.lost,
                self.out_of_order,
                self.errors,
                self.first_error
                    .as_ref()
                    .map(|e| format!(" (first: {e})"))
                    .unwrap_or_default()
            ));
            if self.numbered > 0 {
                s.push_str(&format!(
                    "  numbered (coremq_seq) {} of {} deliveries\n",
                    self.numbered, self.delivered
                ));
            }
            if self.acked > 0 {
                s.push_str(&format!(
                    "  acknowledged {} of {} publishes: {:.0} msg/s\n",
                    self.acked, self.published, self.acked_per_s
                ));
            }
            if let Some(n) = self.stored {
                s.push_str(&format!("  JetStream stream held {n} messages\n"));
            }
        }
        if let Some(l) = &self.latency_us {
            s.push_str(&format!(
                "  {} µs: p50 {} p90 {} p99 {} p99.9 {} max {} (n={})\n",
                self.latency_kind, l.p50, l.p90, l.p99, l.p999, l.max, l.count
            ));
        }
        if let Some(b) = &self.broker {
            s.push_str(&format!(
                "  broker CPU {:.3} s = {:.3} s per million delivered; RSS {} KiB, peak {} KiB\n",
                b.cpu_s, b.cpu_s_per_million, b.rss_kib, b.hwm_kib
            ));
        }
        if let Some(g) = &self.generator {
            s.push_str(&format!(
                "  load generator CPU {:.3} s = {:.3} s per million delivered\n",
                g.cpu_s, g.cpu_s_per_million
            ));
        }
        if let Some(p) = &self.placement {
            s.push_str(&format!(
                "  placement: publisher on shard {}, subscriber on {}, queue owned by {} ({})\n",
                p.publisher,
                p.subscriber,
                p.owner,
                p.label()
            ));
        }
        if let Some(p) = &self.spread {
            s.push_str(&format!("  spread over the shards: {}\n", p.label()));
        }
        if self.stopped_by_time {
            s.push_str("  stopped by --max-seconds before publishing everything\n");
        }
        for n in &self.notes {
            s.push_str(&format!("  note: {n}\n"));
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn skipped_report_says_why() {
        let r = Report::skipped("coremq-ws".into(), "1to1".into(), "no listener".into());
        assert_eq!(r.to_json()["skipped"], "no listener");
        assert!(r.to_text().contains("SKIPPED — no listener"));
    }

    #[test]
    fn json_has_the_figures_scripts_read() {
        let r = Report {
            target: "nats".into(),
            delivered: 10,
            lost: 1,
            latency_us: Some(Summary::default()),
            broker: Some(BrokerUse::default()),
            ..Report::default()
        };
        let j = r.to_json();
        for key in [
            "delivered_per_s",
            "publish_per_s",
            "mb_per_s",
            "lost",
            "latency_us",
            "broker",
        ] {
            assert!(j.get(key).is_some(), "{key} missing");
        }
        assert_eq!(j["lost"], 1);
        assert!(j["latency_us"]["p99"].is_number());
        assert!(j["broker"]["cpu_s_per_million"].is_number());
        assert!(j["placement"].is_null(), "no placement measured: null");
        assert!(j["generator"].is_null(), "no generator use measured: null");
    }

    #[test]
    fn losses_are_loud_in_text_and_counted_in_json() {
        let r = Report {
            target: "coremq".into(),
            workload: "1to1".into(),
            publishers: 1,
            subscribers: 1,
            unwindowed: true,
            published: 1000,
            expected: 1000,
            delivered: 750,
            lost: 250,
            disconnected: 1,
            ..Report::default()
        };
        let t = r.to_text();
        assert!(t.contains("1 sub, unwindowed)"), "{t}");
        assert!(
            t.contains("LOST 250 of 1000 deliveries (25.0 %); 1 subscriber(s) disconnected"),
            "{t}"
        );
        let j = r.to_json();
        assert_eq!(j["lost"], 250);
        assert_eq!(j["disconnected"], 1);
        assert_eq!(j["unwindowed"], true);
        // Nothing lost: no alarm.
        let ok = Report {
            expected: 10,
            delivered: 10,
            window_kib: 4096,
            ..Report::default()
        };
        assert!(!ok.to_text().contains("LOST"));
        assert_eq!(ok.to_json()["window_kib"], 4096);
        assert_eq!(ok.to_json()["unwindowed"], false);
    }

    #[test]
    fn generator_use_is_reported() {
        let r = Report {
            target: "coremq".into(),
            generator: Some(GeneratorUse {
                cpu_s: 0.5,
                cpu_s_per_million: 0.25,
            }),
            ..Report::default()
        };
        let j = r.to_json();
        assert_eq!(j["generator"]["cpu_s"], 0.5);
        assert_eq!(j["generator"]["cpu_s_per_million"], 0.25);
        assert!(r
            .to_text()
            .contains("load generator CPU 0.500 s = 0.250 s per million delivered"));
    }

    #[test]
    fn spread_is_reported_with_its_label() {
        let r = Report {
            target: "coremq".into(),
            spread: Some(Spread {
                publishers: vec![3, 1],
                subscribers: vec![2, 2],
                queues: vec![0, 4],
            }),
            ..Report::default()
        };
        let j = r.to_json();
        assert_eq!(j["spread"]["publishers"], json!([3, 1]));
        assert_eq!(j["spread"]["subscribers"], json!([2, 2]));
        assert_eq!(j["spread"]["queues"], json!([0, 4]));
        assert_eq!(
            j["spread"]["label"],
            "publishers 3+1, subscribers 2+2, queues 0+4"
        );
        assert!(r
            .to_text()
            .contains("spread over the shards: publishers 3+1, subscribers 2+2, queues 0+4"));
        assert!(Report::default().to_json()["spread"].is_null());
    }

    #[test]
    fn placement_is_reported_with_its_label() {
        let r = Report {
            target: "coremq".into(),
            placement: Some(Placement {
                publisher: 1,
                subscriber: 1,
                owner: 0,
            }),
            ..Report::default()
        };
        let j = r.to_json();
        assert_eq!(j["placement"]["publisher"], 1);
        assert_eq!(j["placement"]["subscriber"], 1);
        assert_eq!(j["placement"]["owner"], 0);
        assert_eq!(j["placement"]["label"], "both hops");
        assert!(r
            .to_text()
            .contains("publisher on shard 1, subscriber on 1, queue owned by 0 (both hops)"));
    }
}
