//! Exact stacks without frame pointers: a cache of unwind rules (x86_64 Linux).
//!
//! Every function's `.eh_frame` entry says, for each instruction, where the caller's frame
//! begins (the CFA: the stack pointer or `rbp` plus an offset), where the return address is
//! (CFA - 8) and where `rbp` was saved. On x86_64 that row almost always fits in one word, so
//! the unwinder keeps a process-wide table *instruction address → packed rule*, shared by all
//! threads, read without locks, and fills it on a miss from the module's `.eh_frame`, parsed
//! with `gimli` and found with glibc's `_dl_find_object` (or `dl_iterate_phdr` where glibc is
//! older). Warm, a frame costs a hash, a table load, an add and a stack load.
//!
//! Nothing here allocates, and nothing is generic over the program's types, so the code runs at
//! this crate's optimization level even in the program's debug builds.
//!
//! Correctness guards: every step must move the CFA up, 8-aligned, within this thread's stack;
//! a frame whose rule is missing or not a plain register+offset (DWARF expressions: PLT stubs,
//! signal trampolines, JIT code without unwind tables) ends the stack *truncated*, never
//! guessed. The rule's 32-bit tag shares the word with the rule, so a reader that races a
//! writer sees a mismatched tag (a miss), never a torn rule. The tag also folds in a
//! generation that changes when a module is unloaded, which retires every cached rule.

use gimli::{
    BaseAddresses, CfaRule, EhFrame, EhFrameHdr, LittleEndian, Register, RegisterRule,
    UnwindContext, UnwindContextStorage, UnwindSection, UnwindTableRow, X86_64,
};
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
//   bits 17..19  kind: NORMAL or END (0 = no rule)
//   bits 24..32  where rbp was saved, in words from the CFA (an i8; 0 = rbp unchanged)
//   bits 32..64  tag: a hash of the address and the generation
const RBP_BASE: u64 = 1 << 16;
const KIND_SHIFT: u32 = 17;
const KIND_MASK: u64 = 3 << KIND_SHIFT;
const NORMAL: u64 = 1 << KIND_SHIFT;
const END: u64 = 2 << KIND_SHIFT;

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
        if rule & KIND_MASK == END {
            return (n, true);
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

/// Fixed-size storage for gimli's unwind context: no allocation on the miss path.
struct Fixed;

impl UnwindContextStorage<usize> for Fixed {
    type Rules = [(Register, RegisterRule<usize>); 32];
    type Stack = [UnwindTableRow<usize, Self>; 4];
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
    find_module(pc)
        .and_then(|module| rule_for(pc, &module))
        .map_or(0, |rule| store(pc, rule))
}

fn rule_for(pc: usize, module: &Module) -> Option<u64> {
    let hdr = module.eh_frame_hdr;
    // SAFETY: `hdr` is the start of the module's mapped PT_GNU_EH_FRAME segment, at least its
    // 12-byte header long (checked below before the table is used).
    let head = unsafe { std::slice::from_raw_parts(hdr as *const u8, 12) };
    // The encodings every Linux toolchain writes: version 1, eh_frame_ptr pc-relative sdata4,
    // fde_count udata4, table data-relative sdata4 (8 bytes an entry).
    if head[..4] != [1, 0x1B, 0x03, 0x3B] {
        return None;
    }
    let eh_frame_rel = i32::from_le_bytes(head[4..8].try_into().ok()?);
    let eh_frame = (hdr + 4).checked_add_signed(eh_frame_rel as isize)?;
    let count = u32::from_le_bytes(head[8..12].try_into().ok()?) as usize;
    let hdr_len = 12usize.checked_add(count.checked_mul(8)?)?;
    if hdr.checked_add(hdr_len)? > module.end || eh_frame >= module.end {
        return None;
    }
    // SAFETY: both ranges lie within the module's mapping, which stays mapped while code of it
    // is on this thread's stack.
    let (hdr_bytes, eh_frame_bytes) = unsafe {
        (
            std::slice::from_raw_parts(hdr as *const u8, hdr_len),
            std::slice::from_raw_parts(eh_frame as *const u8, module.end - eh_frame),
        )
    };
    let bases = BaseAddresses::default()
        .set_eh_frame_hdr(hdr as u64)
        .set_eh_frame(eh_frame as u64);
    let parsed = EhFrameHdr::new(hdr_bytes, LittleEndian)
        .parse(&bases, 8)
        .ok()?;
    let table = parsed.table()?;
    let section = EhFrame::new(eh_frame_bytes, LittleEndian);
    let mut ctx = UnwindContext::<usize, Fixed>::new_in();
    let row = table
        .unwind_info_for_address(
            &section,
            &bases,
            &mut ctx,
            pc as u64,
            EhFrame::cie_from_offset,
        )
        .ok()?;
    pack(row)
}

fn pack(row: &UnwindTableRow<usize, Fixed>) -> Option<u64> {
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
    // SAFETY: `each` matches the callback type and only reads what glibc passes it.
    unsafe { libc::dl_iterate_phdr(Some(each), (&mut search as *mut Search).cast()) };
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
    // SAFETY: `first` matches the callback type and writes only our local.
    unsafe { libc::dl_iterate_phdr(Some(first), (&mut subs as *mut u64).cast()) };
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
}
