//! Exact stacks without frame pointers: a cache of unwind rules (x86_64 Linux).
//!
//! Every function's `.eh_frame` entry says, for each instruction, where the caller's frame
//! begins (the CFA: the stack pointer or `rbp` plus an offset), where the return address is
//! (CFA - 8) and where `rbp` was saved. On x86_64 that row almost always fits in one word, so
//! the unwinder keeps a process-wide table *instruction address → packed rule*, shared by all
//! threads, read without locks, and fills it on a miss from the module's `.eh_frame`, read by a
//! small parser of its own and found with glibc's `_dl_find_object` (or `dl_iterate_phdr`
//! where glibc is older). Warm, a frame costs a hash, a table load, an add and a stack load.
//!
//! Nothing here allocates, and nothing is generic over the program's types, so the code runs at
//! this crate's optimization level even in the program's debug builds. A miss keeps only a few
//! words of state on the stack (it may run on a signal handler's small alternate stack).
//!
//! Correctness guards: every step must move the CFA up, 8-aligned, within this thread's stack;
//! a frame whose rule is missing or not a plain register+offset (DWARF expressions: PLT stubs,
//! signal trampolines, JIT code without unwind tables) ends the stack *truncated*, never
//! guessed. The rule's 32-bit tag shares the word with the rule, so a reader that races a
//! writer sees a mismatched tag (a miss), never a torn rule. The tag also folds in a
//! generation that changes when a module is unloaded, which retires every cached rule.

use std::mem::MaybeUninit;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering::Relaxed};

const SET_BITS: u32 = 11;
const WAYS: usize = 4;
/// 2048 sets × 4 ways × 16 bytes = 128 KiB, static, shared by every thread.
static TABLE: [[Slot; WAYS]; 1 << SET_BITS] =
    [const { [const { Slot::empty() }; WAYS] }; 1 << SET_BITS];

struct Slot {
    key: AtomicUsize,
    rule: AtomicU64,
}

impl Slot {
    const fn empty() -> Slot {
        Slot {
            key: AtomicUsize::new(0),
            rule: AtomicU64::new(0),
        }
    }
}

/// Bumped when a module is unloaded: every cached rule then misses.
static GENERATION: AtomicU32 = AtomicU32::new(0);

// The packed rule (a u64):
//   bits  0..16  CFA offset
//   bit  16      the CFA is based on rbp (else on rsp)
//   bits 17..19  kind: NORMAL, END or STOP (0 = no rule)
//   bits 24..32  where rbp was saved, in words from the CFA (an i8; 0 = rbp unchanged)
//   bits 32..64  tag: a hash of the address and the generation
const RBP_BASE: u64 = 1 << 16;
const KIND_SHIFT: u32 = 17;
const KIND_MASK: u64 = 3 << KIND_SHIFT;
const NORMAL: u64 = 1 << KIND_SHIFT;
const END: u64 = 2 << KIND_SHIFT;
/// The module's unwind tables give no packable rule here (a DWARF expression: a signal
/// trampoline such as glibc's `__restore_rt`, a PLT stub): the stack is cut short. Cached like
/// a rule, since the tables of a loaded module do not change, so an allocation in a signal
/// handler does not read `.eh_frame` again at the trampoline every time.
const STOP: u64 = 3 << KIND_SHIFT;

/// The set of `key`: code addresses are dense and varied in their low bits, so a shift and an
/// xor spread them well enough, and keep a multiply off the critical path of the walk (each
/// frame's lookup waits on the previous frame's load).
#[inline(always)]
fn set_of(key: usize) -> usize {
    ((key >> 3) ^ (key >> (3 + SET_BITS))) & ((1 << SET_BITS) - 1)
}

/// The key's hash, for the tag (off the critical path: compared after the loads).
#[inline(always)]
fn spread(key: usize) -> u64 {
    (key as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)
}

/// The generation, mixed, as the tags fold it in (read once per capture).
#[inline(always)]
fn generation_mix() -> u32 {
    GENERATION.load(Relaxed).wrapping_mul(0x9E37_79B9)
}

#[inline(always)]
fn tag(h: u64, generation: u32) -> u64 {
    // The hash's high bits, with the generation folded in; never 0.
    (((h >> 32) as u32) ^ generation) as u64 | 1
}

#[inline(always)]
fn lookup(key: usize, generation: u32) -> u64 {
    let h = spread(key);
    let set = &TABLE[set_of(key)];
    let want = tag(h, generation);
    for slot in set {
        if slot.key.load(Relaxed) == key {
            let rule = slot.rule.load(Relaxed);
            if rule >> 32 == want {
                return rule;
            }
        }
    }
    0
}

fn store(key: usize, rule_without_tag: u64) -> u64 {
    let h = spread(key);
    let set = &TABLE[set_of(key)];
    let rule = rule_without_tag | (tag(h, generation_mix()) << 32);
    let way = set
        .iter()
        .position(|s| s.key.load(Relaxed) == 0)
        .unwrap_or(((h >> 24) as usize) % WAYS);
    let slot = &set[way];
    // Clear the rule first: a reader that sees the new key with the old rule finds the wrong
    // tag, and one that sees the old key with the new rule finds the wrong tag too (the tag
    // hashes the key).
    slot.rule.store(0, Relaxed);
    slot.key.store(key, Relaxed);
    slot.rule.store(rule, Relaxed);
    rule
}

/// Registers at the point of capture, read together so that they agree with the unwind row of
/// `ip`.
#[inline(always)]
fn registers() -> (usize, usize, usize) {
    let (ip, sp, bp): (usize, usize, usize);
    // SAFETY: reads rip, rsp and rbp; no memory access, no stack use.
    unsafe {
        std::arch::asm!("lea {0}, [rip]", "mov {1}, rsp", "mov {2}, rbp",
            out(reg) ip, out(reg) sp, out(reg) bp,
            options(nomem, nostack, preserves_flags));
    }
    (ip, sp, bp)
}

/// Fills `buf` with return addresses, innermost first (the first is the return into the
/// caller of this function); returns how many, and whether the stack ended cleanly (at the
/// outermost frame, whose unwind row says so) rather than being cut short.
#[inline(never)]
pub(crate) fn unwind(buf: &mut [MaybeUninit<usize>], stack_top: usize) -> (usize, bool) {
    let (ip, sp, bp) = registers();
    walk(ip, sp, bp, stack_top, buf)
}

#[inline(always)]
fn walk(
    ip: usize,
    mut sp: usize,
    mut bp: usize,
    top: usize,
    buf: &mut [MaybeUninit<usize>],
) -> (usize, bool) {
    let low = sp;
    let span = top.wrapping_sub(low);
    if top <= low || span < 8 {
        return (0, false);
    }
    // Readable: 8-aligned words in [low, top), one comparison for both ends.
    let last = span - 8;
    let read = |at: usize| -> Option<usize> {
        if at.wrapping_sub(low) > last || at % 8 != 0 {
            return None;
        }
        // SAFETY: `at` is 8-aligned and [at, at + 8) lies in this thread's stack, between the
        // stack pointer at capture time and the stack's upper end.
        Some(unsafe { (at as *const usize).read() })
    };
    let generation = generation_mix();
    let mut key = ip;
    let mut n = 0;
    while n < buf.len() {
        let mut rule = lookup(key, generation);
        if rule == 0 {
            rule = miss(key);
            if rule == 0 {
                return (n, false);
            }
        }
        if rule & KIND_MASK != NORMAL {
            return (n, rule & KIND_MASK == END);
        }
        let base = if rule & RBP_BASE != 0 { bp } else { sp };
        let Some(cfa) = base.checked_add((rule & 0xFFFF) as usize) else {
            return (n, false);
        };
        if cfa <= sp {
            return (n, false);
        }
        let Some(ret) = read(cfa - 8) else {
            return (n, false);
        };
        let saved = (rule >> 24) as u8 as i8;
        if saved != 0 {
            let Some(at) = cfa.checked_add_signed(saved as isize * 8) else {
                return (n, false);
            };
            match read(at) {
                Some(v) => bp = v,
                None => return (n, false),
            }
        }
        if ret == 0 {
            return (n, true);
        }
        buf[n].write(ret);
        n += 1;
        sp = cfa;
        // Look up the call instruction, not the instruction after it (the return address may
        // be the first instruction of the next function's rows).
        key = ret - 1;
    }
    (n, false)
}

/// Where a module's unwind tables are.
struct Module {
    eh_frame_hdr: usize,
    /// End of the module's mapping: a bound for `.eh_frame`, whose length the header omits.
    end: usize,
}

#[cold]
#[inline(never)]
fn miss(pc: usize) -> u64 {
    check_unloads();
    // No module: nothing is cached (code could be mapped there later without an unload).
    let Some(module) = find_module(pc) else {
        return 0;
    };
    store(pc, rule_for(pc, &module).unwrap_or(STOP))
}

/// The packed rule for `pc` from its module's `.eh_frame`. The steps are separate functions
/// called one after another, so that the stack holds one step's frame at a time (it matters
/// in debug builds, where nothing is inlined and every temporary has its own stack slot).
fn rule_for(pc: usize, module: &Module) -> Option<u64> {
    let (fde, eh_frame) = fde_address(pc, module)?;
    let (cie_at, rest) = Fde::header(fde, eh_frame, module.end)?;
    let cie = Cie::parse(cie_at, module.end)?;
    let fde = Fde::parse(rest, &cie)?;
    if !(fde.start..fde.end).contains(&(pc as u64)) {
        return None;
    }
    evaluate(pc as u64, &cie, &fde)
}

/// The FDE that may hold `pc`, from the binary search table of `.eh_frame_hdr`, and the start
/// of `.eh_frame`.
fn fde_address(pc: usize, module: &Module) -> Option<(usize, usize)> {
    let hdr = module.eh_frame_hdr;
    let end = module.end;
    let mut head = Cursor::new(hdr, end)?;
    // The encodings every Linux toolchain writes: version 1, eh_frame_ptr pc-relative sdata4,
    // fde_count udata4, table data-relative sdata4 (8 bytes an entry).
    if head.bytes::<4>()? != [1, 0x1B, 0x03, 0x3B] {
        return None;
    }
    let field = head.at;
    let eh_frame = (field as u64).wrapping_add(head.i32()? as i64 as u64) as usize;
    let count = head.u32()? as usize;
    let table = head.at;
    if table.checked_add(count.checked_mul(8)?)? > end || eh_frame >= end {
        return None;
    }
    // Entry `i`: its first address and its FDE's, both relative to the header.
    let entry = |i: usize, field: usize| -> Option<u64> {
        let mut c = Cursor::new(table + i * 8 + field * 4, end)?;
        Some((hdr as u64).wrapping_add(c.i32()? as i64 as u64))
    };
    // The last entry starting at or below `pc` (the table is sorted by start address).
    let (mut low, mut high) = (0, count);
    while low < high {
        let mid = low + (high - low) / 2;
        if entry(mid, 0)? <= pc as u64 {
            low = mid + 1;
        } else {
            high = mid;
        }
    }
    let fde = usize::try_from(entry(low.checked_sub(1)?, 1)?).ok()?;
    (fde >= eh_frame).then_some((fde, eh_frame))
}

/// Runs the CIE's and the FDE's instructions up to `pc`'s row, and packs the row.
fn evaluate(pc: u64, cie: &Cie, fde: &Fde) -> Option<u64> {
    let mut program = Program::new(cie);
    program.run(cie.instructions, None)?;
    program.initial = Some(program.row);
    program.run(
        fde.instructions,
        Some(Rows {
            pc,
            start: fde.start,
        }),
    )?;
    pack(&program.row)
}

// ---- reading `.eh_frame` ----------------------------------------------------------------------
//
// A reader of its own rather than gimli's: the miss path runs on whatever stack allocates, a
// signal handler's alternate stack included, and must stay small there, also in debug builds.
// With gimli (an `UnwindContext` of fixed-size rows of every register's rule, 1 KiB a row,
// copied on the stack while its program runs) a miss took 7.4 KiB of stack in release and
// over 9 KiB in debug; now about 0.5 KiB in release (`miss`'s frame; the rest are leaves) and
// 3 KiB in debug. Everything is read through a cursor bounded by the module's mapping, and
// only what a packed rule needs is kept.

/// Reads little-endian values in `[at, end)`, a range of a loaded module's mapping.
#[derive(Clone, Copy)]
struct Cursor {
    at: usize,
    end: usize,
}

impl Cursor {
    fn new(at: usize, end: usize) -> Option<Cursor> {
        (at <= end).then_some(Cursor { at, end })
    }

    fn is_empty(&self) -> bool {
        self.at >= self.end
    }

    fn bytes<const N: usize>(&mut self) -> Option<[u8; N]> {
        if self.end - self.at < N {
            return None;
        }
        // SAFETY: [at, at + N) lies within the module's mapping (checked just above), which
        // stays mapped while code of the module is on this thread's stack.
        let bytes = unsafe { (self.at as *const [u8; N]).read_unaligned() };
        self.at += N;
        Some(bytes)
    }

    fn u8(&mut self) -> Option<u8> {
        Some(self.bytes::<1>()?[0])
    }

    fn u16(&mut self) -> Option<u16> {
        Some(u16::from_le_bytes(self.bytes()?))
    }

    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.bytes()?))
    }

    fn i32(&mut self) -> Option<i32> {
        Some(i32::from_le_bytes(self.bytes()?))
    }

    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.bytes()?))
    }

    fn skip(&mut self, n: u64) -> Option<()> {
        let n = usize::try_from(n).ok()?;
        if self.end - self.at < n {
            return None;
        }
        self.at += n;
        Some(())
    }

    /// An unsigned LEB128 number of at most 10 bytes; `None` when it overflows 64 bits.
    fn uleb(&mut self) -> Option<u64> {
        let mut value = 0u64;
        let mut shift = 0;
        loop {
            let byte = self.u8()?;
            let bits = u64::from(byte & 0x7F);
            if bits << shift >> shift != bits {
                return None;
            }
            value |= bits << shift;
            if byte & 0x80 == 0 {
                return Some(value);
            }
            shift += 7;
            if shift > 63 {
                return None;
            }
        }
    }

    /// A signed LEB128 number of at most 10 bytes (bits beyond 64 are dropped).
    fn sleb(&mut self) -> Option<i64> {
        let mut value = 0i64;
        let mut shift = 0;
        loop {
            let byte = self.u8()?;
            value |= i64::from(byte & 0x7F) << shift;
            shift += 7;
            if byte & 0x80 == 0 {
                if shift < 64 && byte & 0x40 != 0 {
                    value |= -1i64 << shift;
                }
                return Some(value);
            }
            if shift > 63 {
                return None;
            }
        }
    }

    /// A value in the format of a `DW_EH_PE_*` encoding's low four bits.
    fn value(&mut self, encoding: u8) -> Option<u64> {
        Some(match encoding & 0x0F {
            0x00 | 0x04 => self.u64()?,
            0x01 => self.uleb()?,
            0x02 => u64::from(self.u16()?),
            0x03 => u64::from(self.u32()?),
            0x09 => self.sleb()? as u64,
            0x0A => i16::from_le_bytes(self.bytes()?) as i64 as u64,
            0x0B => self.i32()? as i64 as u64,
            0x0C => self.u64()?,
            _ => return None,
        })
    }

    /// An address in a `DW_EH_PE_*` encoding: absolute or relative to where it is stored (the
    /// only two toolchains use for code addresses in `.eh_frame`).
    fn pointer(&mut self, encoding: u8) -> Option<u64> {
        let here = self.at as u64;
        let value = self.value(encoding)?;
        match encoding & 0xF0 {
            0x00 => Some(value),
            0x10 => Some(here.wrapping_add(value)),
            _ => None,
        }
    }

    /// A length-prefixed `.eh_frame` entry at `self.at`: its contents (after the length).
    fn entry(&mut self) -> Option<Cursor> {
        let length = self.u32()?;
        // 0 ends the section; 0xFFFF_FFFF (64-bit lengths) is not written for .eh_frame.
        if length == 0 || length == 0xFFFF_FFFF {
            return None;
        }
        let start = self.at;
        self.skip(u64::from(length))?;
        Cursor::new(start, self.at)
    }
}

/// What a CIE says about its FDEs.
#[derive(Clone, Copy)]
struct Cie {
    code_alignment: u64,
    data_alignment: i64,
    /// Encoding of the FDEs' addresses (`R` augmentation; absolute without one).
    encoding: u8,
    /// The augmentation starts with `z`: FDEs carry augmentation data, with its length.
    sized: bool,
    instructions: Cursor,
}

impl Cie {
    fn parse(at: usize, end: usize) -> Option<Cie> {
        let mut c = Cursor::new(at, end)?.entry()?;
        if c.u32()? != 0 {
            return None; // an FDE, not a CIE
        }
        let version = c.u8()?;
        if version != 1 && version != 3 {
            return None;
        }
        let augmentation = c;
        while c.u8()? != 0 {}
        let mut letters = augmentation;
        let code_alignment = c.uleb()?;
        let data_alignment = c.sleb()?;
        let return_address = if version == 1 {
            u64::from(c.u8()?)
        } else {
            c.uleb()?
        };
        if return_address != RA {
            return None;
        }
        let mut cie = Cie {
            code_alignment,
            data_alignment,
            encoding: 0,
            sized: false,
            instructions: c,
        };
        match letters.u8()? {
            0 => return Some(cie),
            b'z' => cie.sized = true,
            _ => return None, // data of unknown length follows
        }
        let length = c.uleb()?;
        let mut data = c;
        c.skip(length)?;
        data.end = c.at;
        loop {
            match letters.u8()? {
                0 => break,
                b'R' => cie.encoding = data.u8()?,
                b'P' => {
                    let encoding = data.u8()?;
                    data.value(encoding)?;
                }
                b'L' => {
                    data.u8()?;
                }
                b'S' => {}
                // Unknown: the rest is skipped by its length, as libgcc does.
                _ => break,
            }
        }
        cie.instructions = c;
        Some(cie)
    }
}

struct Fde {
    start: u64,
    end: u64,
    instructions: Cursor,
}

impl Fde {
    /// The FDE at `at`, in `.eh_frame` (`[section, end)`): where its CIE is, and the rest of
    /// it (read with the CIE's encoding).
    fn header(at: usize, section: usize, end: usize) -> Option<(usize, Cursor)> {
        let mut c = Cursor::new(at, end)?.entry()?;
        let id_at = c.at;
        let back = c.u32()?;
        if back == 0 {
            return None; // a CIE
        }
        let cie_at = id_at.checked_sub(back as usize)?;
        (cie_at >= section).then_some((cie_at, c))
    }

    /// The rest of an FDE after its [`header`](Fde::header).
    fn parse(mut c: Cursor, cie: &Cie) -> Option<Fde> {
        let start = c.pointer(cie.encoding)?;
        let length = c.value(cie.encoding)?;
        if cie.sized {
            let n = c.uleb()?;
            c.skip(n)?;
        }
        Some(Fde {
            start,
            end: start.checked_add(length)?,
            instructions: c,
        })
    }
}

// ---- evaluating a CFI program -------------------------------------------------------------
//
// Only what a packed rule can hold is tracked: the CFA, and the rules of the return address and
// of rbp. Other registers' rules are parsed and ignored, so there is no limit on how many a
// frame saves, and the whole state is a few words.

/// DWARF register numbers (x86_64 psABI).
const RBP: u64 = 6;
const RSP: u64 = 7;
const RA: u64 = 16;

/// The CFA rule.
#[derive(Clone, Copy)]
enum Cfa {
    /// A register plus an offset.
    At(u64, i64),
    /// A DWARF expression: not packable.
    Expression,
}

/// A register's rule.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Saved {
    /// No rule given (rbp: unchanged; the return address: unknown).
    Unset,
    Undefined,
    SameValue,
    /// Saved at CFA + offset.
    At(i64),
    /// Another register, a value offset, an expression: not packable.
    Other,
}

#[derive(Clone, Copy)]
struct Row {
    cfa: Cfa,
    ra: Saved,
    rbp: Saved,
}

impl Row {
    fn rule(&self, register: u64) -> Saved {
        match register {
            RA => self.ra,
            RBP => self.rbp,
            _ => Saved::Unset,
        }
    }
}

/// Rows kept by `DW_CFA_remember_state` at once (compilers nest one); deeper ends the stack
/// cut short.
const REMEMBERED: usize = 4;

/// Where an FDE's program stops: at the row holding `pc`.
#[derive(Clone, Copy)]
struct Rows {
    pc: u64,
    /// Where the current row starts.
    start: u64,
}

struct Program {
    row: Row,
    /// The row after the CIE's initial instructions (what `DW_CFA_restore` returns to).
    initial: Option<Row>,
    remembered: [Row; REMEMBERED],
    depth: usize,
    code_alignment: u64,
    data_alignment: i64,
    /// The encoding of `DW_CFA_set_loc`'s address.
    encoding: u8,
}

impl Program {
    fn new(cie: &Cie) -> Program {
        let row = Row {
            cfa: Cfa::At(0, 0),
            ra: Saved::Unset,
            rbp: Saved::Unset,
        };
        Program {
            row,
            initial: None,
            remembered: [row; REMEMBERED],
            depth: 0,
            code_alignment: cie.code_alignment,
            data_alignment: cie.data_alignment,
            encoding: cie.encoding,
        }
    }

    fn set(&mut self, register: u64, rule: Saved) {
        match register {
            RA => self.row.ra = rule,
            RBP => self.row.rbp = rule,
            _ => {}
        }
    }

    fn saved_at(&mut self, register: u64, factored: i64) {
        self.set(
            register,
            Saved::At(factored.wrapping_mul(self.data_alignment)),
        );
    }

    fn cfa_offset(&mut self, offset: i64) -> Option<()> {
        match &mut self.row.cfa {
            Cfa::At(_, o) => *o = offset,
            Cfa::Expression => return None,
        }
        Some(())
    }

    /// Runs instructions: the CIE's initial ones (`rows` None: no row changes there), or an
    /// FDE's up to the row holding `rows.pc`. `None`: malformed, or beyond what is kept.
    fn run(&mut self, mut c: Cursor, mut rows: Option<Rows>) -> Option<()> {
        while !c.is_empty() {
            let op = c.u8()?;
            let advance = match op >> 6 {
                1 => u64::from(op & 0x3F),
                2 => {
                    let offset = c.uleb()?;
                    self.saved_at(u64::from(op & 0x3F), offset as i64);
                    continue;
                }
                3 => {
                    self.restore(u64::from(op & 0x3F))?;
                    continue;
                }
                _ => match op {
                    0x01 => {
                        // DW_CFA_set_loc: a new row at an address.
                        let address = c.pointer(self.encoding)?;
                        let Some(rows) = rows.as_mut() else {
                            continue;
                        };
                        if address < rows.start {
                            return None;
                        }
                        if rows.pc < address {
                            return Some(());
                        }
                        rows.start = address;
                        continue;
                    }
                    0x02 => u64::from(c.u8()?),
                    0x03 => u64::from(c.u16()?),
                    0x04 => u64::from(c.u32()?),
                    _ => {
                        self.instruction(op, &mut c)?;
                        continue;
                    }
                },
            };
            // DW_CFA_advance_loc*: the current row ends `advance` code units further on.
            if let Some(rows) = rows.as_mut() {
                let next = rows
                    .start
                    .checked_add(advance.checked_mul(self.code_alignment)?)?;
                if rows.pc < next {
                    return Some(());
                }
                rows.start = next;
            }
        }
        Some(())
    }

    /// One instruction that does not change rows (its opcode's high bits clear).
    fn instruction(&mut self, op: u8, c: &mut Cursor) -> Option<()> {
        match op {
            0x00 => {} // nop
            // offset_extended, offset_extended_sf, GNU_negative_offset_extended
            0x05 => {
                let register = c.uleb()?;
                let offset = c.uleb()?;
                self.saved_at(register, offset as i64);
            }
            0x11 => {
                let register = c.uleb()?;
                let offset = c.sleb()?;
                self.saved_at(register, offset);
            }
            0x2F => {
                let register = c.uleb()?;
                let offset = c.uleb()?;
                self.saved_at(register, (offset as i64).wrapping_neg());
            }
            0x06 => self.restore(c.uleb()?)?,
            0x07 => self.set(c.uleb()?, Saved::Undefined),
            0x08 => self.set(c.uleb()?, Saved::SameValue),
            // register, val_offset, val_offset_sf
            0x09 | 0x14 | 0x15 => {
                let register = c.uleb()?;
                c.uleb()?; // the same bytes for a ULEB or an SLEB operand
                self.set(register, Saved::Other);
            }
            // expression, val_expression
            0x10 | 0x16 => {
                let register = c.uleb()?;
                let length = c.uleb()?;
                c.skip(length)?;
                self.set(register, Saved::Other);
            }
            0x0A => {
                *self.remembered.get_mut(self.depth)? = self.row;
                self.depth += 1;
            }
            0x0B => {
                self.depth = self.depth.checked_sub(1)?;
                self.row = self.remembered[self.depth];
            }
            0x0C => {
                let register = c.uleb()?;
                let offset = c.uleb()?;
                self.row.cfa = Cfa::At(register, offset as i64);
            }
            0x12 => {
                let register = c.uleb()?;
                let offset = c.sleb()?;
                self.row.cfa = Cfa::At(register, offset.wrapping_mul(self.data_alignment));
            }
            0x0D => {
                let register = c.uleb()?;
                match &mut self.row.cfa {
                    Cfa::At(r, _) => *r = register,
                    Cfa::Expression => return None,
                }
            }
            0x0E => {
                let offset = c.uleb()?;
                self.cfa_offset(offset as i64)?;
            }
            0x13 => {
                let offset = c.sleb()?;
                self.cfa_offset(offset.wrapping_mul(self.data_alignment))?;
            }
            0x0F => {
                let length = c.uleb()?;
                c.skip(length)?;
                self.row.cfa = Cfa::Expression;
            }
            0x2E => {
                c.uleb()?; // GNU_args_size: the caller's frame is found without it
            }
            _ => return None,
        }
        Some(())
    }

    /// `DW_CFA_restore`: the register's rule after the CIE's instructions (none inside them).
    fn restore(&mut self, register: u64) -> Option<()> {
        let initial = self.initial?;
        self.set(register, initial.rule(register));
        Some(())
    }
}

fn pack(row: &Row) -> Option<u64> {
    match row.ra {
        Saved::Undefined => return Some(END),
        Saved::At(-8) => {}
        _ => return None,
    }
    let mut rule = NORMAL;
    match row.cfa {
        Cfa::At(register, offset) if (0..=0xFFFF).contains(&offset) => {
            if register == RBP {
                rule |= RBP_BASE;
            } else if register != RSP {
                return None;
            }
            rule |= offset as u64;
        }
        _ => return None,
    }
    match row.rbp {
        Saved::Unset | Saved::SameValue => {}
        Saved::At(o) if o % 8 == 0 && (-1024..0).contains(&o) => {
            rule |= ((o / 8) as i8 as u8 as u64) << 24;
        }
        _ => return None,
    }
    Some(rule)
}

// ---- finding a module --------------------------------------------------------------------

/// glibc 2.35+'s `struct dl_find_object` (x86_64).
#[repr(C)]
struct DlFindObject {
    flags: u64,
    map_start: *mut libc::c_void,
    map_end: *mut libc::c_void,
    link_map: *mut libc::c_void,
    eh_frame: *mut libc::c_void,
    reserved: [u64; 7],
}

type DlFindObjectFn = unsafe extern "C" fn(*mut libc::c_void, *mut DlFindObject) -> libc::c_int;

/// `_dl_find_object`, looked up once: 0 = not looked up, 1 = absent, else the function.
static DL_FIND_OBJECT: AtomicUsize = AtomicUsize::new(0);

fn find_module(pc: usize) -> Option<Module> {
    let mut f = DL_FIND_OBJECT.load(Relaxed);
    if f == 0 {
        // SAFETY: dlsym with RTLD_DEFAULT and a NUL-terminated name; it allocates, if at all,
        // with glibc's own malloc, never through this crate.
        let sym = unsafe { libc::dlsym(libc::RTLD_DEFAULT, c"_dl_find_object".as_ptr()) };
        f = if sym.is_null() { 1 } else { sym as usize };
        DL_FIND_OBJECT.store(f, Relaxed);
    }
    if f != 1 {
        // SAFETY: `f` is glibc's `_dl_find_object` (documented MT-, AS- and AC-safe), called with
        // a valid out-pointer to a struct of glibc's layout.
        let found = unsafe {
            let find: DlFindObjectFn = std::mem::transmute::<usize, DlFindObjectFn>(f);
            let mut out = MaybeUninit::<DlFindObject>::zeroed();
            (find(pc as *mut libc::c_void, out.as_mut_ptr()) == 0).then(|| out.assume_init())
        };
        let found = found?;
        if found.eh_frame.is_null() {
            return None;
        }
        return Some(Module {
            eh_frame_hdr: found.eh_frame as usize,
            end: found.map_end as usize,
        });
    }
    find_module_by_phdr(pc)
}

/// The module holding `pc` and its PT_GNU_EH_FRAME segment, from `dl_iterate_phdr`.
fn find_module_by_phdr(pc: usize) -> Option<Module> {
    struct Search {
        pc: usize,
        found: Option<Module>,
    }
    unsafe extern "C" fn each(
        info: *mut libc::dl_phdr_info,
        _size: libc::size_t,
        data: *mut libc::c_void,
    ) -> libc::c_int {
        // SAFETY: glibc passes a valid `dl_phdr_info` whose `dlpi_phdr` has `dlpi_phnum`
        // entries, and our own `Search` as `data`.
        unsafe {
            let search = &mut *(data as *mut Search);
            let info = &*info;
            let phdrs = std::slice::from_raw_parts(info.dlpi_phdr, info.dlpi_phnum as usize);
            let base = info.dlpi_addr as usize;
            let mut contains = false;
            let mut end = 0;
            let mut hdr = 0;
            for ph in phdrs {
                let start = base.wrapping_add(ph.p_vaddr as usize);
                if ph.p_type == libc::PT_LOAD {
                    let stop = start.wrapping_add(ph.p_memsz as usize);
                    contains |= (start..stop).contains(&search.pc);
                    end = end.max(stop);
                } else if ph.p_type == libc::PT_GNU_EH_FRAME {
                    hdr = start;
                }
            }
            if contains {
                if hdr != 0 {
                    search.found = Some(Module {
                        eh_frame_hdr: hdr,
                        end,
                    });
                }
                return 1;
            }
            0
        }
    }
    let mut search = Search { pc, found: None };
    // Busy (another thread is listing the modules, or a fork is under way): no module found;
    // the frame ends the stack. Only where glibc lacks `_dl_find_object`.
    super::try_iterating_loaded_objects(|| {
        // SAFETY: `each` matches the callback type and only reads what glibc passes it.
        unsafe { libc::dl_iterate_phdr(Some(each), (&mut search as *mut Search).cast()) }
    })?;
    search.found
}

/// Modules unloaded so far, as glibc counts them (`dlpi_subs`).
static UNLOADS_SEEN: AtomicU64 = AtomicU64::new(0);

/// Retires every cached rule when a module has been unloaded since the last check (a module
/// loaded later at the same addresses must not inherit the old module's rules). Runs on every
/// miss and every 1024 captures of a thread.
#[cold]
#[inline(never)]
pub(crate) fn check_unloads() {
    unsafe extern "C" fn first(
        info: *mut libc::dl_phdr_info,
        size: libc::size_t,
        data: *mut libc::c_void,
    ) -> libc::c_int {
        // SAFETY: glibc passes a valid `dl_phdr_info` of `size` bytes, and our u64 as `data`.
        unsafe {
            if size >= std::mem::size_of::<libc::dl_phdr_info>() {
                *(data as *mut u64) = (*info).dlpi_subs;
            }
        }
        1
    }
    let mut subs: u64 = 0;
    let iterated = super::try_iterating_loaded_objects(|| {
        // SAFETY: `first` matches the callback type and writes only our local.
        unsafe { libc::dl_iterate_phdr(Some(first), (&mut subs as *mut u64).cast()) }
    });
    if iterated.is_none() {
        // Another thread is listing the modules (or a fork is under way): the next check will
        // see what this one would have.
        return;
    }
    if UNLOADS_SEEN.swap(subs, Relaxed) != subs {
        GENERATION.fetch_add(1, Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_pack_and_races_read_as_misses() {
        // A key stored, then found; another key in the same slot makes it miss.
        let key = 0x5555_0000_1234;
        assert_eq!(lookup(key, generation_mix()), 0);
        let rule = store(key, NORMAL | 16);
        assert_eq!(lookup(key, generation_mix()), rule);
        assert_eq!(rule & 0xFFFF, 16);
        GENERATION.fetch_add(1, Relaxed);
        assert_eq!(
            lookup(key, generation_mix()),
            0,
            "a new generation retires old rules"
        );
    }

    #[test]
    fn this_stack_unwinds_to_a_clean_end() {
        let mut buf = [MaybeUninit::uninit(); 256];
        let top = super::super::capture::current_stack_top();
        let (n, clean) = unwind(&mut buf, top);
        assert!(n > 3, "{n} frames");
        assert!(clean, "the test thread's stack ends at clone3's unwind row");
    }

    /// The rule gimli's general unwinder gives for `pc`, packed as the cache packs it: the
    /// reference for this module's own `.eh_frame` reader.
    fn gimli_rule(pc: u64, module: &Module) -> Option<u64> {
        use gimli::{
            BaseAddresses, CfaRule, EhFrame, EhFrameHdr, LittleEndian, RegisterRule, UnwindContext,
            UnwindSection, X86_64,
        };
        let hdr = module.eh_frame_hdr;
        // SAFETY: the header and `.eh_frame` lie in the module's mapping (as `rule_for` checks).
        let (hdr_bytes, eh_frame, eh_frame_bytes) = unsafe {
            let head = std::slice::from_raw_parts(hdr as *const u8, 12);
            let rel = i32::from_le_bytes(head[4..8].try_into().unwrap());
            let count = u32::from_le_bytes(head[8..12].try_into().unwrap()) as usize;
            let eh_frame = (hdr + 4).checked_add_signed(rel as isize).unwrap();
            (
                std::slice::from_raw_parts(hdr as *const u8, 12 + 8 * count),
                eh_frame,
                std::slice::from_raw_parts(eh_frame as *const u8, module.end - eh_frame),
            )
        };
        let bases = BaseAddresses::default()
            .set_eh_frame_hdr(hdr as u64)
            .set_eh_frame(eh_frame as u64);
        let parsed = EhFrameHdr::new(hdr_bytes, LittleEndian)
            .parse(&bases, 8)
            .ok()?;
        let section = EhFrame::new(eh_frame_bytes, LittleEndian);
        let mut ctx = UnwindContext::new();
        let row = parsed
            .table()?
            .unwind_info_for_address(&section, &bases, &mut ctx, pc, EhFrame::cie_from_offset)
            .ok()?;
        match row.register(X86_64::RA) {
            Some(RegisterRule::Undefined) => return Some(END),
            Some(RegisterRule::Offset(-8)) => {}
            _ => return None,
        }
        let mut rule = NORMAL;
        match *row.cfa() {
            CfaRule::RegisterAndOffset { register, offset } if (0..=0xFFFF).contains(&offset) => {
                if register == X86_64::RBP {
                    rule |= RBP_BASE;
                } else if register != X86_64::RSP {
                    return None;
                }
                rule |= offset as u64;
            }
            _ => return None,
        }
        match row.register(X86_64::RBP) {
            None | Some(RegisterRule::SameValue) => {}
            Some(RegisterRule::Offset(o)) if o % 8 == 0 && (-1024..0).contains(&o) => {
                rule |= ((o / 8) as i8 as u8 as u64) << 24;
            }
            _ => return None,
        }
        Some(rule)
    }

    /// The first and last address of every row of every FDE of `module`, by gimli's reading.
    fn row_addresses(module: &Module) -> Vec<u64> {
        use gimli::{
            BaseAddresses, EhFrame, EhFrameHdr, LittleEndian, UnwindContext, UnwindSection,
        };
        let hdr = module.eh_frame_hdr;
        // SAFETY: as in `gimli_rule`.
        let (hdr_bytes, eh_frame, eh_frame_bytes) = unsafe {
            let head = std::slice::from_raw_parts(hdr as *const u8, 12);
            let rel = i32::from_le_bytes(head[4..8].try_into().unwrap());
            let count = u32::from_le_bytes(head[8..12].try_into().unwrap()) as usize;
            let eh_frame = (hdr + 4).checked_add_signed(rel as isize).unwrap();
            (
                std::slice::from_raw_parts(hdr as *const u8, 12 + 8 * count),
                eh_frame,
                std::slice::from_raw_parts(eh_frame as *const u8, module.end - eh_frame),
            )
        };
        let bases = BaseAddresses::default()
            .set_eh_frame_hdr(hdr as u64)
            .set_eh_frame(eh_frame as u64);
        let parsed = EhFrameHdr::new(hdr_bytes, LittleEndian)
            .parse(&bases, 8)
            .unwrap();
        let table = parsed.table().unwrap();
        let section = EhFrame::new(eh_frame_bytes, LittleEndian);
        let mut entries = table.iter(&bases);
        let mut addresses = Vec::new();
        let mut ctx = UnwindContext::new();
        while let Some((start, _)) = entries.next().unwrap() {
            let start = start.direct().unwrap();
            addresses.push(start);
            let Ok(fde) = table.fde_for_address(&section, &bases, start, EhFrame::cie_from_offset)
            else {
                continue;
            };
            addresses.push(fde.end_address() - 1);
            let Ok(mut rows) = fde.rows(&section, &bases, &mut ctx) else {
                continue;
            };
            while let Ok(Some(row)) = rows.next_row() {
                if row.start_address() < row.end_address() {
                    addresses.push(row.start_address());
                    addresses.push(row.end_address() - 1);
                }
            }
        }
        addresses
    }

    /// This reader of `.eh_frame` against gimli's unwinder, on the first and last address of
    /// every row of the test binary (Rust code, std) and of libc (hand-written assembly with
    /// expressions, signal trampolines, remember/restore state).
    #[test]
    fn every_row_reads_as_gimli_reads_it() {
        for (what, code) in [
            (
                "the test binary",
                every_row_reads_as_gimli_reads_it as *const () as usize,
            ),
            ("libc", libc::qsort as *const () as usize),
        ] {
            let module = find_module(code).expect(what);
            let addresses = row_addresses(&module);
            let mut differ = Vec::new();
            let mut packed = 0;
            let mut unpackable = None;
            for &pc in &addresses {
                let ours = rule_for(pc as usize, &module);
                let reference = gimli_rule(pc, &module);
                packed += usize::from(ours.is_some());
                if ours.is_none() {
                    unpackable = Some(pc as usize);
                }
                if ours != reference {
                    differ.push(format!("{pc:#x}: ours {ours:x?}, gimli {reference:x?}"));
                }
            }
            assert!(
                differ.is_empty(),
                "{what}: {} of {} addresses read differently, e.g.\n{}",
                differ.len(),
                addresses.len(),
                differ[..differ.len().min(20)].join("\n")
            );
            assert!(
                addresses.len() > 2000 && packed * 10 > addresses.len() * 9,
                "{what}: {packed} of {} addresses packed",
                addresses.len()
            );
            // An address without a packable rule is cached as the end of a cut-short stack.
            if let Some(pc) = unpackable {
                assert_eq!(miss(pc) & KIND_MASK, STOP, "{what}: {pc:#x}");
            }
        }
    }

    #[test]
    fn leb128() {
        let read = |bytes: &[u8]| {
            let at = bytes.as_ptr() as usize;
            let mut c = Cursor::new(at, at + bytes.len()).unwrap();
            let mut s = c;
            (c.uleb(), s.sleb())
        };
        assert_eq!(read(&[0x02]), (Some(2), Some(2)));
        assert_eq!(read(&[0x7F]), (Some(127), Some(-1)));
        assert_eq!(read(&[0x80, 0x01]), (Some(128), Some(128)));
        assert_eq!(read(&[0x80, 0x7F]), (Some(16256), Some(-128)));
        assert_eq!(read(&[0xE5, 0x8E, 0x26]), (Some(624_485), Some(624_485)));
        assert_eq!(read(&[0xC0, 0xBB, 0x78]), (Some(1_973_696), Some(-123_456)));
        let max = [0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x01];
        assert_eq!(read(&max).0, Some(u64::MAX));
        let over = [0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x02];
        assert_eq!(read(&over).0, None, "more than 64 bits");
        assert_eq!(read(&[0x80, 0x80]), (None, None), "runs past the end");
    }
}
