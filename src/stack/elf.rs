//! Symbolization of code in an object the `backtrace` crate cannot be trusted with (cold path,
//! snapshot time only): one loaded, or replaced, after that crate listed the process's objects,
//! which it does once per process (rust-lang/backtrace-rs#238, still open in 0.3.77).
//!
//! The object's file is mapped and read with the crates the `backtrace` crate itself uses,
//! `object` for the ELF file and `addr2line` (over `gimli`) for its DWARF: function names
//! (inlined frames included), files and lines as `backtrace` would give them. An object
//! without DWARF gives the name from its symbol table; one whose file cannot be read, or is no
//! longer the file that was loaded (another build-id), gives the name `dladdr` finds in memory.

use super::objects::Object;
use addr2line::gimli;
use object::{Object as _, ObjectSection as _};
use std::borrow::Cow;
use std::path::{Path, PathBuf};

/// One frame at an address, before classification: function, source path, line.
pub(crate) type RawFrame = (Option<String>, Option<String>, u32);

pub(super) type Slice = gimli::EndianSlice<'static, gimli::NativeEndian>;

/// Parsed objects kept for their next addresses: parsing DWARF costs far more than a lookup.
const KEPT: usize = 4;

/// The parsed objects, most recently used first.
#[derive(Default)]
pub(crate) struct Resolver {
    parsed: Vec<(u64, Option<Parsed>)>,
}

impl std::fmt::Debug for Resolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Resolver")
            .field(
                "parsed",
                &self.parsed.iter().map(|p| p.0).collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl Resolver {
    /// The frames at `address` (a return address minus one) of `object`, innermost first;
    /// empty when nothing is known there.
    pub(crate) fn frames(&mut self, object: &Object, address: usize) -> Vec<RawFrame> {
        let at = match self.parsed.iter().position(|p| p.0 == object.id) {
            Some(at) => at,
            None => {
                if self.parsed.len() >= KEPT {
                    self.parsed.pop();
                }
                self.parsed.push((object.id, Parsed::open(object)));
                self.parsed.len() - 1
            }
        };
        let entry = self.parsed.remove(at);
        let frames = match &entry.1 {
            Some(parsed) => parsed.frames(address.wrapping_sub(object.bias) as u64),
            None => Vec::new(),
        };
        self.parsed.insert(0, entry);
        if frames.is_empty() {
            return dladdr_name(address)
                .map(|name| vec![(Some(name), None, 0)])
                .unwrap_or_default();
        }
        frames
    }

    /// Forgets the objects `loaded` no longer holds.
    pub(crate) fn retain(&mut self, loaded: impl Fn(u64) -> bool) {
        self.parsed.retain(|p| loaded(p.0));
    }
}

/// A mapping: a file mapped read-only ([`Mmap::open`]), or anonymous private memory written
/// with `pread` ([`Mmap::anonymous`]: pages never written take no memory).
pub(super) struct Mmap {
    ptr: *mut libc::c_void,
    len: usize,
    writable: bool,
}

// SAFETY: the mapping is owned by this value and unmapped once; it is written only through
// `&mut self`.
unsafe impl Send for Mmap {}

impl Mmap {
    pub(super) fn open(path: &Path) -> Option<Mmap> {
        use std::os::unix::io::AsRawFd;
        let file = std::fs::File::open(path).ok()?;
        let len = usize::try_from(file.metadata().ok()?.len()).ok()?;
        Mmap::new(len, libc::PROT_READ, libc::MAP_PRIVATE, file.as_raw_fd())
    }

    /// `len` bytes of zeroed, writable memory, reserved without swap.
    pub(super) fn anonymous(len: usize) -> Option<Mmap> {
        Mmap::new(
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
        )
    }

    fn new(len: usize, prot: libc::c_int, flags: libc::c_int, fd: libc::c_int) -> Option<Mmap> {
        if len == 0 {
            return None;
        }
        // SAFETY: a fresh private mapping (of an open file, of its length, or anonymous); no
        // existing memory is touched, and the descriptor may be closed afterwards.
        let ptr = unsafe { libc::mmap(std::ptr::null_mut(), len, prot, flags, fd, 0) };
        (ptr != libc::MAP_FAILED).then_some(Mmap {
            ptr,
            len,
            writable: prot & libc::PROT_WRITE != 0,
        })
    }

    /// Bytes `[at, at + len)` of an anonymous mapping, for writing (`None` for a file's, or out
    /// of bounds): callers only write before anything borrows [`Mmap::bytes`].
    pub(super) fn range_mut(&mut self, at: u64, len: u64) -> Option<&mut [u8]> {
        let end = at.checked_add(len)?;
        if !self.writable || end > self.len as u64 {
            return None;
        }
        // SAFETY: in bounds of the mapping, which is writable; `&mut self` and the caller's
        // rule (no live borrow of `bytes`) mean nothing else reads it meanwhile.
        Some(unsafe {
            std::slice::from_raw_parts_mut((self.ptr as *mut u8).add(at as usize), len as usize)
        })
    }

    /// The bytes, with a lifetime the caller must not let outlive `self` (see [`Parsed`], and
    /// unitwise.rs's `Units`).
    pub(super) fn bytes(&self) -> &'static [u8] {
        // SAFETY: `ptr` maps `len` readable bytes until `drop`; every `'static` borrow is held
        // by a value that owns this mapping and is dropped before it.
        unsafe { std::slice::from_raw_parts(self.ptr as *const u8, self.len) }
    }
}

impl Drop for Mmap {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `new`, unmapped once.
        unsafe { libc::munmap(self.ptr, self.len) };
    }
}

/// An object's DWARF and symbol table, borrowing its mapped files.
struct Parsed {
    // Fields drop in order: the borrowers first, the mappings they borrow last.
    dwarf: Option<addr2line::Context<Slice>>,
    symbols: object::SymbolMap<object::SymbolMapName<'static>>,
    /// Sections `object` decompressed (when built with its `compression` feature).
    _decompressed: Vec<Box<[u8]>>,
    _maps: Vec<Mmap>,
}

// SAFETY: everything in it is owned by it (the `'static` slices point into `_maps` and
// `_decompressed`) and it is only used under the symbolizer's lock.
unsafe impl Send for Parsed {}

impl Parsed {
    fn open(object: &Object) -> Option<Parsed> {
        if object.main || object.path.as_os_str().is_empty() {
            return None;
        }
        let map = Mmap::open(&object.path)?;
        let file = object::File::parse(map.bytes()).ok()?;
        let file_id = file.build_id().ok().flatten();
        if object.build_id.is_some() && file_id != object.build_id.as_deref() {
            // The file at that path was replaced since it was loaded.
            return None;
        }
        let mut symbols = file.symbol_map();
        let mut decompressed = Vec::new();
        let dwarf = dwarf_of(&file, &mut decompressed);
        let mut maps = Vec::new();
        if dwarf.is_none() && file.section_by_name(".symtab").is_none() {
            // A stripped library: the full symbol table (static functions such as glibc's
            // `__libc_start_call_main` included) is in the debug file a `-dbg` package
            // installed under its build-id. Only that table is read: all of glibc's DWARF
            // would take over 30 MB, for frames that are never the program's own code.
            if let Some(debug_map) = file_id.and_then(|id| Mmap::open(&debug_file_path(id))) {
                if let Ok(debug_file) = object::File::parse(debug_map.bytes()) {
                    let full = debug_file.symbol_map();
                    if !full.symbols().is_empty() {
                        symbols = full;
                    }
                }
                maps.push(debug_map);
            }
        }
        maps.push(map);
        Some(Parsed {
            dwarf,
            symbols,
            _decompressed: decompressed,
            _maps: maps,
        })
    }

    /// The frames at `svma`, an address as the file states it.
    fn frames(&self, svma: u64) -> Vec<RawFrame> {
        let symbol = || {
            self.symbols
                .containing(svma)
                .map(|s| demangle(s.name().as_bytes()))
        };
        let name =
            |f: &addr2line::FunctionName<Slice>| f.raw_name().ok().map(|n| demangle(n.as_bytes()));
        let mut out = self
            .dwarf
            .as_ref()
            .and_then(|dwarf| dwarf_frames(dwarf, svma, name, symbol))
            .unwrap_or_default();
        if out.is_empty() {
            if let Some(name) = symbol() {
                out.push((Some(name), None, 0));
            }
        }
        out
    }
}

/// The frames addr2line finds at `svma` in `context`, innermost first, each function named by
/// `name` (from its DWARF entry) or else by `symbol` (the symbol table); `None` when the lookup
/// fails.
pub(super) fn dwarf_frames(
    context: &addr2line::Context<Slice>,
    svma: u64,
    name: impl Fn(&addr2line::FunctionName<Slice>) -> Option<String>,
    symbol: impl Fn() -> Option<String>,
) -> Option<Vec<RawFrame>> {
    let mut out = Vec::new();
    let mut frames = context.find_frames(svma).skip_all_loads().ok()?;
    while let Ok(Some(frame)) = frames.next() {
        let function = frame.function.as_ref().and_then(&name).or_else(&symbol);
        let (path, line) = match &frame.location {
            Some(l) => (l.file.map(str::to_owned), l.line.unwrap_or(0)),
            None => (None, 0),
        };
        out.push((function, path, line));
    }
    Some(out)
}

/// The DWARF of `file`, `None` when it has none (no `.debug_info`).
fn dwarf_of(
    file: &object::File<'static>,
    decompressed: &mut Vec<Box<[u8]>>,
) -> Option<addr2line::Context<Slice>> {
    file.section_by_name(".debug_info")?;
    let dwarf = gimli::Dwarf::load(|id| -> Result<Slice, ()> {
        let data: &'static [u8] = match file
            .section_by_name(id.name())
            .and_then(|s| s.uncompressed_data().ok())
        {
            Some(Cow::Borrowed(data)) => data,
            Some(Cow::Owned(data)) => {
                let data = data.into_boxed_slice();
                // SAFETY: the box is kept in `decompressed`, owned by the `Parsed` that owns
                // the context borrowing it, and dropped after that context; its heap
                // allocation does not move when the vector grows.
                let slice = unsafe { std::slice::from_raw_parts(data.as_ptr(), data.len()) };
                decompressed.push(data);
                slice
            }
            // Absent, or compressed and `object` built without decompression.
            None => &[],
        };
        Ok(gimli::EndianSlice::new(data, gimli::NativeEndian))
    })
    .ok()?;
    addr2line::Context::from_dwarf(dwarf).ok()
}

/// `/usr/lib/debug/.build-id/ab/cdef….debug`, where debuggers look for separate debug info.
fn debug_file_path(build_id: &[u8]) -> PathBuf {
    let hex: String = build_id.iter().map(|b| format!("{b:02x}")).collect();
    let (dir, rest) = hex.split_at(2.min(hex.len()));
    PathBuf::from(format!("/usr/lib/debug/.build-id/{dir}/{rest}.debug"))
}

/// Whether the file of `object` (a shared object, not the executable) holds DWARF of its own:
/// a `.debug_info` section that is not empty. False when it cannot be read.
pub(crate) fn has_own_dwarf(object: &Object) -> bool {
    if object.path.as_os_str().is_empty() {
        return false;
    }
    let Some(map) = Mmap::open(&object.path) else {
        return false;
    };
    let Ok(file) = object::File::parse(map.bytes()) else {
        return false;
    };
    file.section_by_name(".debug_info")
        .is_some_and(|s| s.size() > 0)
}

/// Rust symbols demangled as the `backtrace` crate prints them (`{:#}`: without the hash),
/// others as they are.
pub(super) fn demangle(raw: &[u8]) -> String {
    format!("{:#}", backtrace::SymbolName::new(raw))
}

/// The exported symbol `dladdr` finds at `address`, from the loaded object's dynamic symbol
/// table in memory.
fn dladdr_name(address: usize) -> Option<String> {
    // SAFETY: dladdr only reads the loader's tables; `info` is a valid out-pointer, and its
    // `dli_sname` is NULL or a NUL-terminated name in a loaded object.
    unsafe {
        let mut info = std::mem::zeroed::<libc::Dl_info>();
        if libc::dladdr(address as *const libc::c_void, &mut info) == 0 || info.dli_sname.is_null()
        {
            return None;
        }
        Some(demangle(
            std::ffi::CStr::from_ptr(info.dli_sname).to_bytes(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_files_are_found_by_build_id() {
        assert_eq!(
            debug_file_path(&[0xab, 0xcd, 0x01]),
            PathBuf::from("/usr/lib/debug/.build-id/ab/cd01.debug")
        );
    }

    #[test]
    fn libc_has_no_dwarf_of_its_own() {
        // A distribution's libc keeps its DWARF apart (or has none): its frames are named from
        // its symbol table, whatever `-dbg` package is installed.
        let mut objects = super::super::objects::Objects::default();
        objects.refresh();
        let address = libc::getpid as *const () as usize;
        let libc = objects.find(address).expect("libc is loaded");
        assert!(!has_own_dwarf(libc), "{:?}", libc.path);
    }

    #[test]
    fn a_stripped_library_is_named_from_its_debug_files_symbols_without_its_dwarf() {
        let mut objects = super::super::objects::Objects::default();
        objects.refresh();
        let libc = objects
            .find(libc::getpid as *const () as usize)
            .expect("libc is loaded");
        let Some(debug) = libc
            .build_id
            .as_deref()
            .and_then(|id| Mmap::open(&debug_file_path(id)))
        else {
            eprintln!("no debug file for {:?}: nothing to check", libc.path);
            return;
        };
        let file = object::File::parse(debug.bytes()).expect("a debug file parses");
        // A static function: in the debug file's symbol table, not in libc's dynamic one.
        let svma = file
            .symbol_map()
            .symbols()
            .iter()
            .find(|s| s.name() == "__libc_start_call_main")
            .expect("glibc's debug file names __libc_start_call_main")
            .address();
        let address = (svma as usize).wrapping_add(libc.bias) + 1;
        let frames = Resolver::default().frames(libc, address);
        // Named, and without the file and line only its DWARF would give.
        assert_eq!(
            frames,
            vec![(Some("__libc_start_call_main".to_owned()), None, 0)]
        );
        // And so through the symbolizer, which does not hand libc to the `backtrace` crate.
        let resolved = super::super::symbolize::resolve_all(&[address]);
        let frames = &resolved[&address];
        assert_eq!(frames.len(), 1);
        assert_eq!(&*frames[0].frame.function, "__libc_start_call_main");
        assert_eq!(frames[0].frame.lineno, 0);
    }

    #[test]
    fn a_shared_library_is_resolved_from_its_file() {
        // libc's `getpid`, through the same path a plugin takes.
        let mut objects = super::super::objects::Objects::default();
        objects.refresh();
        let address = libc::getpid as *const () as usize;
        let libc = objects.find(address).expect("libc is loaded");
        let frames = Resolver::default().frames(libc, address);
        assert!(
            frames
                .iter()
                .any(|f| f.0.as_deref().is_some_and(|n| n.contains("getpid"))),
            "{frames:?}"
        );
    }
}
