//! `trainer fit`: EchoDistill's training (SPEC §3–5). So far: what is trained ([`trainable`]).
//! The loop, data and configuration are the next steps (issue 5).

pub mod trainable;
