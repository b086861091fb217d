//! PROTOCOL.md §2: a connection-id queue is private. Anyone who knows an id
//! may send to it; only its connection may subscribe to it or read its
//! history — over TCP and WebSocket, on every node of a cluster.

mod common;

use common::cluster::{Cluster, Spec};
use common::web::WsClient;
use common::*;
use serde_json::json;
use std::time::Duration;

fn denied(action: &str, queue: &str) -> String {
    format!("ERROR: Permission denied: {action} {queue}")
}

fn another_connections_id_is_private(shards: usize) {
    let b = Broker::start(BrokerOpts::new(shards).ws());
    let mut a = b.client();
    let mut other = b.client();
    let open = uniq("open");
    let a_id = a.id.clone();

    // Sending to an id is allowed (point-to-point) ...
    other.publish(&a_id, &json!({"to": "a"}));
    assert_eq!(a.recv_msg().json["to"], json!("a"));
    // ... reading it is not, and a list naming it is refused whole.
    other.command(&json!({ "coremq_subscribe": a_id }));
    assert_eq!(other.expect_error(), denied("subscribe", &a_id));
    other.command(&json!({ "coremq_subscribe": [open.clone(), a_id.clone()] }));
    assert_eq!(other.expect_error(), denied("subscribe", &a_id));
    other.command(&json!({ "coremq_gethistory": [open.clone(), a_id.clone()] }));
    assert_eq!(other.expect_error(), denied("history", &a_id));
    a.publish(&open, &json!({"n": 1}));
    other.publish(&a_id, &json!({"to": "a", "n": 2}));
    assert_eq!(a.recv_msg().json["n"], json!(2));
    other.assert_no_msg(Duration::from_millis(200));

    // Its own connection reads it: subscribing again is fine, and its history
    // has what was sent to it.
    a.subscribe(&[&a_id]);
    let h = a.history(&[&a_id]);
    assert_eq!(h[&a_id].as_array().unwrap().len(), 2, "{h:?}");
    // The other client's refused list took no effect, and the allowed part
    // of a fresh request works.
    other.subscribe(&[&open]);
    a.publish(&open, &json!({"n": 3}));
    assert_eq!(other.recv_msg().json["n"], json!(3));
    // A name that merely looks like an id in upper case is another queue.
    let upper = a_id.to_uppercase();
    other.subscribe(&[&upper]);

    // Over WebSocket, the same refusal and the same right to send.
    let mut w = WsClient::connect(b.ws_addr());
    w.send_json(&json!({ "coremq_subscribe": [a_id.clone()] }));
    let r = w.recv_reply();
    assert_eq!(r["response"], json!(denied("subscribe", &a_id)), "{r}");
    w.send_json(&json!({ "coremq_gethistory": [a_id.clone()] }));
    let r = w.recv_reply();
    assert_eq!(r["response"], json!(denied("history", &a_id)), "{r}");
    w.publish(&a_id, &json!({"from": "ws"}));
    assert_eq!(a.recv_msg().json["from"], json!("ws"));
}

per_shard_count!(another_connections_id_is_private:
    another_connections_id_is_private_1_shard = 1,
    another_connections_id_is_private_4_shards = 4);

#[test]
fn ids_are_private_on_every_node() {
    let mut cl = Cluster::start(Spec {
        nodes: 2,
        ..Spec::new(2)
    });
    cl.wait_links_up();
    let mut a = cl.nodes[0].client();
    let mut far = cl.nodes[1].client();
    let a_id = a.id.clone();
    far.command(&json!({ "coremq_subscribe": [a_id.clone()] }));
    assert_eq!(far.expect_error(), denied("subscribe", &a_id));
    far.command(&json!({ "coremq_gethistory": [a_id.clone()] }));
    assert_eq!(far.expect_error(), denied("history", &a_id));
    // Point-to-point across nodes still works.
    far.publish(&a_id, &json!({"across": true}));
    assert_eq!(a.recv_msg().json["across"], json!(true));
    cl.assert_alive();
}
