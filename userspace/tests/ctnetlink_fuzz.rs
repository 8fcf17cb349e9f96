//! The ctnetlink reader from outside the crate: it does not allocate, and a
//! long run of damaged input never makes it panic.
//!
//! A separate test binary because it installs a counting global allocator.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use ctsync::ctnetlink::{
    self, CreateMode, Decoded, EntryOptions, Request,
    consts::{ips, tcp_flags},
    encode,
};
use ctsync_common::conntrack::{
    AF_INET, AF_INET6, CtExt, CtRecord, IPPROTO_ICMP, IPPROTO_SCTP, IPPROTO_TCP, IPPROTO_UDP,
    NatSeq, Tuple, record_flags as rf,
};

/// Counts allocations per thread, so that other tests running in parallel
/// do not disturb the count.
struct Counting;

thread_local! {
    static ALLOCATIONS: Cell<usize> = const { Cell::new(0) };
}

fn count() {
    let _ = ALLOCATIONS.try_with(|c| c.set(c.get() + 1));
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count();
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count();
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count();
        unsafe { System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

fn allocations() -> usize {
    ALLOCATIONS.with(Cell::get)
}

#[test]
fn the_counter_sees_allocations() {
    let before = allocations();
    let v = std::hint::black_box(vec![0u8; 64]);
    assert_eq!(allocations() - before, 1);
    drop(v);
}

fn tuple(family: u8, proto: u8, a: u8, b: u8, sport: u16, dport: u16) -> Tuple {
    let mut t = Tuple {
        family,
        proto,
        src_port: sport.to_be(),
        dst_port: dport.to_be(),
        ..Default::default()
    };
    let n = if family == AF_INET6 { 16 } else { 4 };
    t.src[n - 1] = a;
    t.dst[n - 1] = b;
    t.src[0] = 10;
    t.dst[0] = 10;
    t
}

/// A batch of every kind of request, for both families.
fn sample_batch(buf: &mut Vec<u8>) {
    let ext = CtExt {
        nat_seq: [
            NatSeq {
                correction_pos: 1,
                offset_before: 2,
                offset_after: 3,
            },
            NatSeq::default(),
        ],
        helper: *b"ftp\0\0\0\0\0\0\0\0\0\0\0\0\0",
        sctp_vtag: [0x1234_5678, 0x9abc_def0],
    };
    for (i, family) in [AF_INET, AF_INET6].into_iter().enumerate() {
        for (j, proto) in [IPPROTO_TCP, IPPROTO_UDP, IPPROTO_ICMP, IPPROTO_SCTP, 50]
            .into_iter()
            .enumerate()
        {
            let mut orig = tuple(family, proto, 1, 2, 1000 + j as u16, 80);
            if proto == IPPROTO_ICMP {
                orig.set_icmp(8, 0);
            }
            let mut reply = encode::invert_tuple(&orig);
            reply.dst[3] = 99;
            let rec = CtRecord {
                orig: Tuple {
                    zone: i as u16,
                    ..orig
                },
                reply: Tuple {
                    zone: i as u16,
                    ..reply
                },
                status: ips::SEEN_REPLY | ips::ASSURED | ips::SRC_NAT,
                timeout: 120,
                mark: 7,
                labels: [3; 16],
                flags: rf::HAS_REPLY
                    | rf::HAS_TIMEOUT
                    | rf::HAS_MARK
                    | rf::HAS_PROTOINFO
                    | rf::HAS_LABELS,
                proto_state: 3,
                tcp_flags_orig: tcp_flags::SACK_PERM,
                ..Default::default()
            };
            let opts = EntryOptions {
                tcp_be_liberal: true,
            };
            encode::create(
                buf,
                Request::new(1),
                CreateMode::Exclusive,
                &rec,
                Some(&ext),
                opts,
            );
            encode::update(buf, Request::new(2), &rec, Some(&ext), opts);
            encode::delete(buf, Request::new(3), &rec.orig);
            encode::get(buf, Request::new(4), &rec.orig);
        }
    }
    encode::dump_request(buf, 5);
}

#[test]
fn decoding_does_not_allocate() {
    let mut buf = Vec::with_capacity(1 << 16);
    sample_batch(&mut buf);
    let mut rec = CtRecord::default();
    let mut ext = CtExt::default();
    let mut entries = 0;
    let before = allocations();
    for _ in 0..100 {
        for msg in ctnetlink::messages(&buf) {
            let msg = msg.unwrap();
            if let Ok(Decoded::Conntrack { .. }) = ctnetlink::decode(msg, &mut rec, &mut ext) {
                entries += 1;
            }
            let _ = ctnetlink::header(msg);
        }
        // Damaged input takes the error paths, which must not allocate either.
        for cut in [3, 17, 40, 101] {
            for msg in ctnetlink::messages(&buf[..cut]).flatten() {
                let _ = ctnetlink::decode(msg, &mut rec, &mut ext);
            }
        }
    }
    let after = allocations();
    assert_eq!(entries, 100 * 2 * 5 * 3);
    assert_eq!(after - before, 0, "the reader allocated");
}

#[test]
fn encoding_into_a_reused_buffer_does_not_allocate() {
    let mut buf = Vec::new();
    sample_batch(&mut buf);
    buf.clear();
    let before = allocations();
    for _ in 0..100 {
        buf.clear();
        sample_batch(&mut buf);
    }
    assert_eq!(allocations() - before, 0, "the writer allocated");
}

/// xorshift64*: deterministic, so a failure reproduces.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

#[test]
fn long_fuzz_run_never_panics() {
    let mut valid = Vec::new();
    sample_batch(&mut valid);
    let msgs: Vec<Vec<u8>> = ctnetlink::messages(&valid)
        .map(|m| m.unwrap().to_vec())
        .collect();
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut rec = CtRecord::default();
    let mut ext = CtExt::default();
    let mut work = Vec::with_capacity(4096);
    let mut decoded = 0u64;
    for _ in 0..300_000 {
        work.clear();
        match rng.below(4) {
            // Pure noise.
            0 => (0..rng.below(300)).for_each(|_| work.push(rng.next() as u8)),
            // Valid messages with a few bytes changed.
            1 | 2 => {
                for _ in 0..1 + rng.below(3) {
                    work.extend_from_slice(&msgs[rng.below(msgs.len())]);
                }
                for _ in 0..1 + rng.below(4) {
                    let i = rng.below(work.len());
                    work[i] ^= 1 + rng.below(255) as u8;
                }
            }
            // A valid message cut short, its length field made to agree.
            _ => {
                let m = &msgs[rng.below(msgs.len())];
                let n = rng.below(m.len() + 1);
                work.extend_from_slice(&m[..n]);
                if n >= 4 && rng.below(2) == 0 {
                    work[..4].copy_from_slice(&(n as u32).to_ne_bytes());
                }
            }
        }
        for msg in ctnetlink::messages(&work) {
            let Ok(msg) = msg else { break };
            if ctnetlink::decode(msg, &mut rec, &mut ext).is_ok() {
                decoded += 1;
            }
        }
        let _ = ctnetlink::decode(&work, &mut rec, &mut ext);
    }
    // Many damaged messages still decode (a changed port is still a port).
    assert!(decoded > 10_000, "{decoded}");
}
