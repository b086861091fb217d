//! memcached's text protocol on `memcached_port` (PROTOCOL.md §13).

#[allow(dead_code)]
mod parse;
