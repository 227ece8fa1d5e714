#!/usr/bin/env python3
"""Writes the snapshot files that tests/damaged_files.rs loads.

An independent writer of the dump format (see src/snapshot/persist.rs): `valid.tracealloc`
must load, and every other file is damaged in exactly one way. Run from this folder:
    python3 make.py
"""
import struct
import zlib

def u8(v): return struct.pack("<B", v)
def u32(v): return struct.pack("<I", v)
def u64(v): return struct.pack("<Q", v)

def body(limit=16, mode=1, strings=None, frames=None, tracebacks=None, traces=None,
         string_count=None, trace_count=None, raw_strings=None, totals=None, totals_flag=None, duration_flag=1, v2=None, sample_mean=0,
         v3=False, peak=None, peak_flag=1, sizes=None, v5=False, origin=None, origin_flag=None,
         v6=False, lifetimes=None, lifetimes_flag=None, lifetime_count=None):
    strings = strings if strings is not None else ["src/main.rs", "/home/u/app/src/main.rs", "app::parse", "app::main"]
    frames = frames if frames is not None else [(0, 1, 2, 41), (0, 1, 3, 12)]
    tracebacks = tracebacks if tracebacks is not None else [([0, 1], 0, 16, 0)]
    traces = traces if traces is not None else [(2048, 0), (64, 0)]
    out = u32(limit) + u8(mode) + u32(0)
    out += u32(len(strings) if string_count is None else string_count)
    for s in (raw_strings if raw_strings is not None else [s.encode() for s in strings]):
        out += u32(len(s)) + s
    v2 = totals is not None if v2 is None else v2
    out += u32(len(frames))
    for f in frames:
        out += b"".join(u32(x) for x in f[:4])
        if v2:  # version 2: flags (bit 0: inlined into the next frame)
            out += u8(f[4] if len(f) > 4 else 0)
    out += u32(len(tracebacks))
    for ids, call_site, tb_limit, truncated in tracebacks:
        out += u32(len(ids)) + u32(call_site) + u32(tb_limit) + u8(truncated)
        out += b"".join(u32(i) for i in ids)
    out += u64(len(traces) if trace_count is None else trace_count)
    for size, tb in traces:
        out += u64(size) + u32(tb)
    # Version 2: per-stack allocation totals (bytes, blocks, traceback) of released blocks.
    if totals is not None:
        out += u8(1 if totals_flag is None else totals_flag)
        out += u64(len(totals))
        for total in totals:
            nbytes, blocks, tb = total[0], total[1], total[-1]
            out += u64(nbytes) + u64(blocks)
            if v3:  # version 3: temporary bytes and blocks among them
                out += u64(total[2]) + u64(total[3])
            out += u32(tb)
        # Then the time from the start of tracing to the snapshot, in nanoseconds.
        out += u8(duration_flag)
        if duration_flag == 1:
            out += u64(2_500_000_000)
        # Then the sampling mean (0: every allocation traced).
        out += u64(sample_mean)
    if v3:
        # Version 3: the peak (bytes, time known + nanoseconds, groups of bytes, blocks,
        # traceback live at it), then blocks per power-of-two size bucket.
        # (Version 4: a peak flag of 2 says the breakdown was switched off.)
        out += u8(peak_flag if peak is None and peak_flag == 2 else 0 if peak is None else peak_flag)
        if peak is not None:
            peak_bytes, at, groups = peak
            out += u64(peak_bytes) + u8(1) + u64(at) + u64(len(groups))
            for nbytes, blocks, tb in groups:
                out += u64(nbytes) + u64(blocks) + u32(tb)
        out += u8(0 if sizes is None else 1)
        if sizes is not None:
            out += u8(len(sizes)) + b"".join(u64(n) for n in sizes)
    if v5:
        # Version 5: the origin (nanoseconds since the Unix epoch, pid, program, command line).
        out += u8((0 if origin is None else 1) if origin_flag is None else origin_flag)
        if origin is not None:
            nanos, pid, program, command = origin
            out += u64(nanos) + u32(pid)
            for text in (program, command):
                raw = text if isinstance(text, bytes) else text.encode()
                out += u32(len(raw)) + raw
    if v6:
        # Version 6: per stack, the summed lifetimes of its blocks (nanoseconds, traceback).
        out += u8((0 if lifetimes is None else 1) if lifetimes_flag is None else lifetimes_flag)
        if lifetimes is not None:
            out += u64(len(lifetimes) if lifetime_count is None else lifetime_count)
            for nanos, tb in lifetimes:
                out += u64(nanos) + u32(tb)
    return out

def file(b, magic=b"TRACEALC", version=1, length=None, crc=None):
    return (magic + u32(version) + u64(len(b) if length is None else length)
            + u32(zlib.crc32(b) if crc is None else crc) + b)

valid = file(body())
TOTALS = [(4096, 3, 0)]
TOTALS3 = [(4096, 3, 1024, 1, 0)]
PEAK = (8192, 1_250_000_000, [(8192, 4, 0)])
SIZES = [0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 4]
def v3(version=3, **kw):
    kw.setdefault("totals", TOTALS3)
    kw.setdefault("peak", PEAK)
    kw.setdefault("sizes", SIZES)
    return file(body(v3=True, **kw), version=version)
def v4(**kw):
    # Version 4 has version 3's layout; only the peak flag may also be 2.
    return v3(version=4, **kw)
ORIGIN = (1_796_000_000_123_456_789, 4242, "/srv/app/bin/app", "app --port 8080")
def v5(**kw):
    # Version 5 adds the origin after the size histogram.
    kw.setdefault("origin", ORIGIN)
    return v3(version=5, v5=True, **kw)
LIFETIMES = [(7_500_000_000, 0)]
def v6(**kw):
    # Version 6 adds the block lifetimes after the origin.
    kw.setdefault("lifetimes", LIFETIMES)
    return v3(version=6, v5=True, v6=True, **{"origin": ORIGIN, **kw})
cases = {
    "valid.tracealloc": v6(),
    "valid_v5.tracealloc": v5(),
    "bad_lifetimes_flag.bin": v6(lifetimes=None, lifetimes_flag=4),
    "lifetime_traceback_out_of_range.bin": v6(lifetimes=[(1, 2)]),
    "absurd_lifetime_count.bin": v6(lifetime_count=1 << 40),
    "valid_v4.tracealloc": v4(),
    "valid_v3.tracealloc": v3(),
    "bad_origin_flag.bin": v5(origin=None, origin_flag=7),
    "origin_not_utf8.bin": v5(origin=(1, 2, b"/srv/\xff", "app")),
    "valid_v2.tracealloc": file(body(totals=TOTALS), version=2),
    "peak_switched_off.tracealloc": v6(peak=None, peak_flag=2, origin=None, lifetimes=None),
    "bad_peak_flag.bin": v4(peak_flag=3),
    "v3_peak_flag_2.bin": v3(peak=None, peak_flag=2),
    "zero_block_peak_group.bin": v4(peak=(8192, 0, [(8192, 0, 0)])),
    "peak_traceback_out_of_range.bin": v4(peak=(8192, 0, [(8192, 4, 9)])),
    "too_many_size_buckets.bin": v4(sizes=[1] * 66),
    "temporaries_exceed_totals.bin": v4(totals=[(4096, 3, 1024, 4, 0)]),
    "valid_v1.tracealloc": valid,
    "empty.bin": b"",
    "wrong_magic.bin": file(body(), magic=b"PK\x03\x04xxxx"),
    "unknown_version.bin": file(body(), version=99),
    "truncated.bin": valid[:-10],
    "trailing_bytes.bin": valid + b"\0\0\0",
    "bad_checksum.bin": valid[:30] + bytes([valid[30] ^ 0xFF]) + valid[31:],
    "absurd_string_count.bin": file(body(string_count=0xFFFFFFFF)),
    "bad_utf8.bin": file(body(raw_strings=[b"src/\xff.rs", b"p", b"f", b"g"])),
    "string_index_out_of_range.bin": file(body(frames=[(9, 1, 2, 41), (0, 1, 3, 12)])),
    "call_site_outside.bin": file(body(tracebacks=[([0, 1], 5, 16, 0)])),
    "bad_snapshot_limit.bin": file(body(limit=0)),
    "unknown_capture_mode.bin": file(body(mode=7)),
    "absurd_trace_count.bin": file(body(trace_count=1 << 60)),
    "bad_truncation_flag.bin": file(body(tracebacks=[([0, 1], 0, 16, 2)])),
    "traceback_index_out_of_range.bin": file(body(traces=[(2048, 3)])),
    "sizes_overflow.bin": file(body(traces=[(1 << 62, 0), (1 << 62, 0)])),
    "bad_totals_flag.bin": file(body(totals=TOTALS, totals_flag=5), version=2),
    "zero_block_total.bin": file(body(totals=[(4096, 0, 0)]), version=2),
    "total_traceback_out_of_range.bin": file(body(totals=[(4096, 3, 7)]), version=2),
    "totals_overflow.bin": file(body(totals=[(1 << 63, 1, 0), (1 << 63, 1, 0)]), version=2),
    "bad_duration_flag.bin": file(body(totals=TOTALS, duration_flag=9), version=2),
    "bad_frame_flags.bin": file(body(frames=[(0, 1, 2, 41, 6), (0, 1, 3, 12)], totals=TOTALS), version=2),
    "absurd_sampling_mean.bin": file(body(totals=TOTALS, sample_mean=(1 << 40) + 1), version=2),
    # Valid: sampled with the largest mean, so every estimate is huge (must not overflow).
    "sampled_extreme.tracealloc": file(body(totals=TOTALS, sample_mean=1 << 40,
                                            traces=[(1, 0), (1 << 40, 0)]), version=2),
    "v1_with_totals.bin": file(body(totals=TOTALS, v2=False), version=1),
}
for name, data in cases.items():
    with open(name, "wb") as f:
        f.write(data)
