//! Getting records into the ring buffer: header-only records, and the chunking of a syscall's
//! (or a TLS call's) bytes into records of up to `CHUNK_MAX` bytes from a per-CPU scratch
//! buffer, continued in tail calls when one invocation cannot ship them all, and ended by a
//! truncation record when they cannot all be shipped.
//!
//! One implementation for both lanes (syscalls and TLS plaintext), which differ only in the
//! scratch slot, the job slot and the tail-call map they use.

use aya_ebpf::{
    EbpfContext,
    helpers::{bpf_probe_read_user, generated},
    macros::raw_tracepoint,
    maps::ProgramArray,
    programs::RawTracePointContext,
};
use aya_log_ebpf::error;
use mcptap_abi::{
    CHUNK_MAX, CHUNKS_PER_CALL, EventHeader, FLAG_LOST_BEFORE, FLAG_STATE_NEW, FLAG_TRUNCATED,
    HEADER_SIZE, MAX_IOVECS, MAX_TAIL_CALLS, TAIL_SHIP_MORE, counter,
};

use crate::{
    fd::mark_lost,
    maps::{CONFIG, EVENTS, JOB_SYSCALL, JOBS, SCRATCH, SCRATCH_SYSCALL, TAILS, count},
};

/// Progress of shipping one syscall's bytes, carried across tail calls on one CPU.
#[repr(C)]
pub struct Job {
    pub hdr: EventHeader,
    /// User address of the next iovec to read, or 0 for a single buffer.
    pub iov_ptr: u64,
    /// iovecs left to read.
    pub iov_left: u64,
    /// Current buffer and bytes left in it.
    pub cur_base: u64,
    pub cur_left: u64,
    /// Bytes shipped so far (the next chunk's offset).
    pub shipped: u64,
    pub tail_calls: u32,
    pub _pad: u32,
}

/// Ring buffer output flags: no wake-up until enough waits, so the agent drains in batches.
#[inline(always)]
pub fn wakeup_flags() -> u64 {
    let threshold = CONFIG.load().wakeup_bytes as u64;
    if threshold == 0 || EVENTS.query(BPF_RB_AVAIL_DATA) >= threshold {
        BPF_RB_FORCE_WAKEUP
    } else {
        BPF_RB_NO_WAKEUP
    }
}

const BPF_RB_NO_WAKEUP: u64 = 1;
pub const BPF_RB_FORCE_WAKEUP: u64 = 2;
const BPF_RB_AVAIL_DATA: u64 = 0;

#[inline(always)]
pub fn output_header(hdr: &EventHeader) {
    output_header_flags(hdr, wakeup_flags());
}

#[inline(always)]
pub fn output_header_flags(hdr: &EventHeader, flags: u64) {
    if EVENTS.output::<EventHeader>(hdr, flags).is_ok() {
        count(counter::RECORDS, 1);
    } else {
        count(counter::RINGBUF_FULL, 1);
    }
}

/// Continues shipping a syscall that [`sys_exit`](crate::syscall::sys_exit) (or a previous
/// `ship_more`) began.
#[raw_tracepoint(tracepoint = "sys_exit")]
pub fn ship_more(ctx: RawTracePointContext) -> i32 {
    match try_ship_more(&ctx) {
        Some(()) | None => 0,
    }
}

#[inline(always)]
fn try_ship_more(ctx: &RawTracePointContext) -> Option<()> {
    let job = unsafe { &mut *JOBS.get_ptr_mut(JOB_SYSCALL)? };
    job.tail_calls += 1;
    ship(ctx, job, SCRATCH_SYSCALL, &TAILS);
    Some(())
}

/// Ship up to [`CHUNKS_PER_CALL`] chunks of `job` from scratch slot `scratch`, then tail-call
/// slot [`TAIL_SHIP_MORE`] of `tails` (the lane's own `ship_more`) for the rest. Returns only
/// when the job is finished, shipped or truncated.
#[inline(always)]
pub fn ship<C: EbpfContext>(ctx: &C, job: &mut Job, scratch: u32, tails: &ProgramArray) {
    let Some(scratch) = SCRATCH.get_ptr_mut(scratch) else {
        return;
    };
    let scratch = scratch as *mut u8;
    for _ in 0..CHUNKS_PER_CALL {
        if job.shipped >= job.hdr.total {
            return;
        }
        let going = if job.cur_left == 0 {
            next_iovec(job)
        } else {
            ship_chunk(job, scratch)
        };
        if going.is_none() {
            return;
        }
    }
    if job.shipped < job.hdr.total {
        ship_rest(ctx, job, tails);
    }
}

/// Move `job` on to its next iovec; `None` when there is none to read (the job is then
/// truncated).
#[inline(always)]
fn next_iovec(job: &mut Job) -> Option<()> {
    if job.iov_left == 0 || job.iov_ptr == 0 {
        // The iovecs hold fewer bytes than the syscall returned (another thread changed
        // them): the rest cannot be found, so the syscall ends truncated.
        count(counter::IOV_SHORT, 1);
        truncate(job);
        return None;
    }
    let iov: [u64; 2] = match unsafe { bpf_probe_read_user(job.iov_ptr as *const [u64; 2]) } {
        Ok(v) => v,
        Err(_) => {
            count(counter::READ_FAULTS, 1);
            truncate(job);
            return None;
        }
    };
    job.iov_ptr += 16;
    job.iov_left -= 1;
    job.cur_base = iov[0];
    job.cur_left = iov[1];
    Some(())
}

/// Ship the next chunk of `job`'s current buffer as one record built in `scratch`; `None` when
/// that failed (the job is then truncated, or its fd marked lost).
#[inline(always)]
fn ship_chunk(job: &mut Job, scratch: *mut u8) -> Option<()> {
    let mut n = job.hdr.total - job.shipped;
    if n > job.cur_left {
        n = job.cur_left;
    }
    if n > CHUNK_MAX as u64 {
        n = CHUNK_MAX as u64;
    }
    let hdr = EventHeader {
        offset: job.shipped,
        len: n as u32,
        ..job.hdr
    };
    unsafe {
        *(scratch as *mut EventHeader) = hdr;
        let rc = generated::bpf_probe_read_user(
            scratch.add(HEADER_SIZE) as *mut _,
            n as u32,
            job.cur_base as *const _,
        );
        if rc != 0 {
            count(counter::READ_FAULTS, 1);
            truncate(job);
            return None;
        }
        let record = core::slice::from_raw_parts(scratch, HEADER_SIZE + n as usize);
        if EVENTS.output::<[u8]>(record, wakeup_flags()).is_err() {
            count(counter::RINGBUF_FULL, 1);
            count(counter::RINGBUF_FULL_BYTES, job.hdr.total - job.shipped);
            // The rest of this syscall is useless to userspace after a hole.
            mark_lost(job.hdr.tgid, job.hdr.fd);
            return None;
        }
    }
    count(counter::RECORDS, 1);
    count(counter::BYTES, n);
    // Only the first record of a syscall carries the marks.
    job.hdr.flags &= !(FLAG_LOST_BEFORE | FLAG_STATE_NEW);
    job.shipped += n;
    job.cur_base += n;
    job.cur_left -= n;
    Some(())
}

/// Hand the rest of `job` to the lane's `ship_more` in a tail call, unless that would pass the
/// limits: then, or when the tail call fails, the job ends truncated.
#[inline(always)]
fn ship_rest<C: EbpfContext>(ctx: &C, job: &mut Job, tails: &ProgramArray) {
    if job.tail_calls >= MAX_TAIL_CALLS || job.iov_left > MAX_IOVECS as u64 {
        truncate(job);
        return;
    }
    unsafe { tails.tail_call(ctx, TAIL_SHIP_MORE) };
    // A tail call that returns failed: the slot is empty, or the kernel's limit was reached
    // (which `MAX_TAIL_CALLS` keeps below). Counted, and said, since it should never happen.
    count(counter::TAIL_CALL_FAILED, 1);
    error!(
        ctx,
        "kernel: tail call {} to ship the rest of a syscall of tgid {} fd {} returned; truncated",
        job.tail_calls,
        job.hdr.tgid,
        job.hdr.fd
    );
    truncate(job);
}

/// Stop shipping `job` and say so: a header-only record flagged truncated, at the offset
/// where shipping stopped, and the counters.
#[inline(always)]
fn truncate(job: &mut Job) {
    count(counter::TRUNCATED, 1);
    count(counter::TRUNCATED_BYTES, job.hdr.total - job.shipped);
    let hdr = EventHeader {
        flags: job.hdr.flags | FLAG_TRUNCATED,
        offset: job.shipped,
        len: 0,
        ..job.hdr
    };
    if EVENTS.output::<EventHeader>(&hdr, wakeup_flags()).is_ok() {
        count(counter::RECORDS, 1);
    } else {
        count(counter::RINGBUF_FULL, 1);
        mark_lost(job.hdr.tgid, job.hdr.fd);
    }
}
