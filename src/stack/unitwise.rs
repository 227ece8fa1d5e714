//! The executable's DWARF, read one compilation unit at a time (cold path, snapshot time only).
//!
//! The `backtrace` crate's `addr2line` context reads the root entry and line-program header of
//! every compilation unit when it opens a file. In a mapped file each scattered read maps the
//! 64 KiB around it (the kernel's fault-around), so opening a 22 MB executable made 18 MB of its
//! debug sections resident for a few hundred distinct addresses: most of a snapshot's peak
//! resident memory beyond the program's own (benches/README.md, "The executable's DWARF, unit by
//! unit").
//!
//! Here `.debug_aranges` says which unit holds each address, and `addr2line` is handed a copy of
//! `.debug_info` and `.debug_line` in anonymous memory that holds only those units (and the
//! units they refer to by `DW_FORM_ref_addr`, as link-time optimization emits), each at its own
//! offset, read with `pread`; the units between them are covered by a placeholder unit with no
//! root entry, which `addr2line` skips. Pages never written are never resident. `.debug_str`
//! is copied the same way with only the units' own names and directories in it, and function
//! names are read with `pread` at the offsets `addr2line` finds them at (see `Source::name`);
//! the other sections are read from the mapped file, at the few places these units point to.
//! A later snapshot whose addresses are in units not read yet reads them into a generation
//! of their own, a second context (at most 8, then merged into one).
//!
//! Anything unusual is left to the `backtrace` crate, as before: no `.debug_aranges`, a
//! compressed debug section, split DWARF (a skeleton unit), a unit the chain of unit headers
//! does not reach, an address no `.debug_aranges` entry covers, a file that is not the one
//! loaded.

use super::elf::{demangle, dwarf_frames, Mmap, RawFrame, Slice};
use super::objects::Object;
use addr2line::gimli;
use object::{Object as _, ObjectSection as _};
use std::borrow::Cow;
use std::fs::File;
use std::os::unix::fs::FileExt;

/// The executable's DWARF, as far as snapshots needed it.
#[derive(Default)]
pub(crate) struct Executable {
    /// `None` before the first use; `Some(None)` once it proved unusable.
    state: Option<Option<Units>>,
}

impl std::fmt::Debug for Executable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let read = self.state.as_ref().map(|s| {
            s.as_ref().map(|u| {
                (
                    u.read_in.iter().filter(|r| r.is_some()).count(),
                    u.read_in.len(),
                    u.generations.len(),
                )
            })
        });
        f.debug_struct("Executable")
            .field("units_read", &read)
            .finish()
    }
}

impl Executable {
    /// Makes the units holding `svmas` (addresses as the file states them) readable; `false`
    /// when the executable is left to the `backtrace` crate.
    pub(crate) fn prepare(&mut self, object: &Object, svmas: &[u64]) -> bool {
        let state = self.state.get_or_insert_with(|| Units::open(object));
        let Some(units) = state else {
            return false;
        };
        if units.include(svmas).is_err() {
            *state = None;
            return false;
        }
        true
    }

    /// The frames at `svma`, innermost first: `None` when the executable is left to the
    /// `backtrace` crate, or no unit is known to hold `svma`.
    pub(crate) fn frames(&self, svma: u64) -> Option<Vec<RawFrame>> {
        self.state.as_ref()?.as_ref()?.frames(svma)
    }

    /// How many units are read, and how many the executable has (for tests and benches).
    #[cfg(test)]
    fn units_read(&self) -> Option<(usize, usize)> {
        let units = self.state.as_ref()?.as_ref()?;
        Some((
            units.read_in.iter().filter(|r| r.is_some()).count(),
            units.read_in.len(),
        ))
    }
}

/// A section copied into an anonymous [`Mmap`] a page at a time.
struct Paged {
    image: Mmap,
    at: Placed,
    /// One bit a page: copied.
    copied: Vec<u64>,
}

const PAGE: u64 = 4096;

impl Paged {
    fn new(at: Placed) -> Option<Paged> {
        let pages = at.size.div_ceil(PAGE) as usize;
        Some(Paged {
            image: Mmap::anonymous(at.size as usize)?,
            at,
            copied: vec![0; pages.div_ceil(64)],
        })
    }

    /// Copies the page holding `offset` unless it is there; `false` past the section's end.
    fn page(&mut self, file: &File, offset: u64) -> Result<bool, ()> {
        if offset >= self.at.size {
            return Ok(false);
        }
        let page = (offset / PAGE) as usize;
        let (word, bit) = (page / 64, 1u64 << (page % 64));
        if self.copied[word] & bit == 0 {
            let start = page as u64 * PAGE;
            let len = PAGE.min(self.at.size - start);
            let bytes = self.image.range_mut(start, len).ok_or(())?;
            file.read_exact_at(bytes, self.at.file_offset + start)
                .map_err(|_| ())?;
            self.copied[word] |= bit;
        }
        Ok(true)
    }

    /// Copies the pages of the NUL-terminated string at `offset`.
    fn string(&mut self, file: &File, offset: u64) -> Result<(), ()> {
        let mut at = offset;
        while self.page(file, at)? {
            let end = ((at / PAGE + 1) * PAGE).min(self.at.size);
            if self.image.bytes()[at as usize..end as usize].contains(&0) {
                break;
            }
            at = end;
        }
        Ok(())
    }
}

/// The NUL-terminated string at `offset` of the section at `at`, read with `pread`.
fn read_string(file: &File, at: Placed, offset: u64) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    let mut chunk = [0u8; 256];
    let mut pos = offset;
    // Mangled Rust names run to a few KiB at most.
    while pos < at.size && out.len() < 1 << 16 {
        let len = (chunk.len() as u64).min(at.size - pos) as usize;
        file.read_exact_at(&mut chunk[..len], at.file_offset + pos)
            .ok()?;
        match chunk[..len].iter().position(|&b| b == 0) {
            Some(nul) => {
                out.extend_from_slice(&chunk[..nul]);
                return Some(out);
            }
            None => out.extend_from_slice(&chunk[..len]),
        }
        pos += len as u64;
    }
    None
}

/// Where a section's bytes are in the file.
#[derive(Clone, Copy)]
struct Placed {
    file_offset: u64,
    size: u64,
}

/// Units read together into one `addr2line` context: a later snapshot's new units go into a
/// generation of their own, so the line tables and functions parsed for the earlier ones are
/// kept (a forked child that looks up a few new addresses does not parse its parent's again).
struct Generation {
    // Fields drop in order: the context borrows the images.
    context: addr2line::Context<Slice>,
    _info: Mmap,
    _line: Option<Mmap>,
    /// `.debug_str` with only the units' own names and directories in it (see
    /// [`Units::frames`]); `None`: the mapped file's.
    str: Option<Paged>,
}

/// The strings of the units' root entries, which `addr2line` reads when it opens a unit (the
/// unit's directory prefixes its relative file names).
#[derive(Default)]
struct RootStrings {
    offsets: Vec<u64>,
    /// A root string by index (`.debug_str_offsets`), or a line program that may name its
    /// files in `.debug_str` (version 5): `.debug_str` is read from the mapped file.
    elsewhere: bool,
}

/// At most this many generations: one more merges them all into one (their parsed tables are
/// parsed again, as needed).
const GENERATIONS: usize = 8;

struct Units {
    // Fields drop in order: the contexts borrow the images and the mapping, the symbols and
    // the source's sections the mapping.
    generations: Vec<Generation>,
    symbols: object::SymbolMap<object::SymbolMapName<'static>>,
    /// The generation that read each unit, if one did.
    read_in: Vec<Option<usize>>,
    /// Units not in `.debug_aranges` that may hold code: read with the first batch.
    eager: Vec<usize>,
    /// `.debug_aranges`: `[begin, end)` → index into `starts`, sorted by `begin`.
    ranges: Vec<(u64, u64, usize)>,
    source: Source,
    map: Mmap,
}

/// Where the units come from.
struct Source {
    file: File,
    /// Unit start offsets in `.debug_info`, ascending (each unit ends where the next starts,
    /// the last at the section's end).
    starts: Vec<u64>,
    info_at: Placed,
    line_at: Option<Placed>,
    str_at: Option<Placed>,
    abbrev: &'static [u8],
    /// The sections read from the mapped file.
    by_name: Vec<(gimli::SectionId, &'static [u8])>,
}

const EXE: &str = "/proc/self/exe";

impl Units {
    fn open(object: &Object) -> Option<Units> {
        if !object.main {
            return None;
        }
        let file = File::open(EXE).ok()?;
        let map = Mmap::open(EXE.as_ref())?;
        let elf = object::File::parse(map.bytes()).ok()?;
        if object.build_id.is_some() && elf.build_id().ok().flatten() != object.build_id.as_deref()
        {
            return None;
        }
        let placed = |name: &str| -> Option<Placed> {
            let section = elf.section_by_name(name)?;
            // Compressed sections are left to the `backtrace` crate.
            if section.compressed_file_range().ok()?.format != object::CompressionFormat::None {
                return None;
            }
            let (file_offset, size) = section.file_range()?;
            Some(Placed { file_offset, size })
        };
        let info_at = placed(".debug_info")?;
        let line_at = placed(".debug_line");
        if elf.section_by_name(".debug_line").is_some() && line_at.is_none() {
            return None;
        }
        let mut by_name = Vec::new();
        let mut abbrev: &'static [u8] = &[];
        let mut aranges: &'static [u8] = &[];
        for id in [
            gimli::SectionId::DebugAbbrev,
            gimli::SectionId::DebugAddr,
            gimli::SectionId::DebugAranges,
            gimli::SectionId::DebugLineStr,
            gimli::SectionId::DebugLoc,
            gimli::SectionId::DebugLocLists,
            gimli::SectionId::DebugRanges,
            gimli::SectionId::DebugRngLists,
            gimli::SectionId::DebugStr,
            gimli::SectionId::DebugStrOffsets,
        ] {
            let Some(section) = elf.section_by_name(id.name()) else {
                continue;
            };
            let data: &'static [u8] = match section.uncompressed_data().ok()? {
                Cow::Borrowed(data) => data,
                // Decompressed: left to the `backtrace` crate.
                Cow::Owned(_) => return None,
            };
            match id {
                gimli::SectionId::DebugAbbrev => abbrev = data,
                gimli::SectionId::DebugAranges => aranges = data,
                _ => {}
            }
            by_name.push((id, data));
        }
        if aranges.is_empty() {
            return None;
        }
        let symbols = elf.symbol_map();
        let starts = unit_starts(&file, info_at)?;
        let ranges = arange_ranges(aranges, &starts)?;
        let source = Source {
            file,
            starts,
            info_at,
            line_at,
            str_at: placed(".debug_str"),
            abbrev,
            by_name,
        };
        // Units that `.debug_aranges` does not list (most hold only types) are read at once
        // if their root entry says they hold code, so that an address no entry covers (the
        // C `main` rustc emits has no DWARF) is looked up in every unit that could hold it.
        let mut listed = vec![false; source.starts.len()];
        for r in &ranges {
            listed[r.2] = true;
        }
        let eager = (0..source.starts.len())
            .filter(|&u| !listed[u] && source.may_hold_code(u))
            .collect();
        Some(Units {
            generations: Vec::new(),
            symbols,
            read_in: vec![None; source.starts.len()],
            eager,
            ranges,
            source,
            map,
        })
    }

    /// The unit whose `.debug_aranges` cover `svma`.
    fn unit_of(&self, svma: u64) -> Option<usize> {
        let i = self.ranges.partition_point(|r| r.0 <= svma);
        let &(_, end, unit) = self.ranges.get(i.checked_sub(1)?)?;
        (svma < end).then_some(unit)
    }

    /// Reads the units of `svmas` not read yet, and those they refer to, into a new
    /// generation. `Err` when something is not as this reader expects.
    fn include(&mut self, svmas: &[u64]) -> Result<(), ()> {
        let first = self.generations.is_empty();
        let mut wanted: Vec<usize> = svmas
            .iter()
            .filter_map(|&a| self.unit_of(a))
            .chain(self.eager.iter().copied().filter(|_| first))
            .filter(|&u| self.read_in[u].is_none())
            .collect();
        if wanted.is_empty() && !first {
            return Ok(());
        }
        if self.generations.len() >= GENERATIONS {
            // Merge: every unit read so far, and the new ones, in one generation.
            wanted.extend((0..self.read_in.len()).filter(|&u| self.read_in[u].is_some()));
            self.generations.clear();
            self.read_in.iter_mut().for_each(|r| *r = None);
        }
        let (generation, read) = self.source.generation(&wanted)?;
        let index = self.generations.len();
        for unit in read {
            self.read_in[unit].get_or_insert(index);
        }
        self.generations.push(generation);
        Ok(())
    }

    fn frames(&self, svma: u64) -> Option<Vec<RawFrame>> {
        // An address no `.debug_aranges` entry covers is in no unit, or in one of the first
        // generation's eager units.
        let generation = match self.unit_of(svma) {
            Some(unit) => self.read_in[unit]?,
            None => 0,
        };
        let generation = self.generations.get(generation)?;
        let context = &generation.context;
        let symbol = || {
            self.symbols
                .containing(svma)
                .map(|s| demangle(s.name().as_bytes()))
        };
        let name = |f: &addr2line::FunctionName<Slice>| {
            self.source
                .name(generation, f.name.slice())
                .map(|n| demangle(&n))
        };
        let mut out = dwarf_frames(context, svma, name, symbol)?;
        if out.is_empty() {
            out.push((Some(symbol()?), None, 0));
        }
        // The mapping stays borrowed by the contexts and symbols until `self` drops.
        let _ = &self.map;
        Some(out)
    }
}

impl Source {
    /// The unit holding `.debug_info` offset `offset`.
    fn unit_at(&self, offset: u64) -> Option<usize> {
        self.starts.partition_point(|&s| s <= offset).checked_sub(1)
    }

    fn end_of(&self, unit: usize) -> u64 {
        self.starts
            .get(unit + 1)
            .copied()
            .unwrap_or(self.info_at.size)
    }

    /// A generation of `wanted` and the units they refer to, and which units it read.
    fn generation(&self, wanted: &[usize]) -> Result<(Generation, Vec<usize>), ()> {
        let mut info = Mmap::anonymous(self.info_at.size as usize).ok_or(())?;
        let mut line = match self.line_at {
            Some(at) => Some(Mmap::anonymous(at.size as usize).ok_or(())?),
            None => None,
        };
        let mut read = vec![false; self.starts.len()];
        let mut work = wanted.to_vec();
        let mut roots = RootStrings::default();
        while let Some(unit) = work.pop() {
            if read[unit] {
                continue;
            }
            read[unit] = true;
            for offset in self.read_unit(unit, &mut info, line.as_mut(), &mut roots)? {
                let target = self.unit_at(offset).ok_or(())?;
                if !read[target] {
                    work.push(target);
                }
            }
        }
        self.cover_gaps(&read, &mut info)?;
        let mut str = match self.str_at {
            Some(at) if !roots.elsewhere => Some(Paged::new(at).ok_or(())?),
            _ => None,
        };
        if let Some(str) = &mut str {
            for &offset in &roots.offsets {
                str.string(&self.file, offset)?;
            }
        }
        let context = self.context(&info, line.as_ref(), str.as_ref()).ok_or(())?;
        let units = (0..read.len()).filter(|&u| read[u]).collect();
        Ok((
            Generation {
                context,
                _info: info,
                _line: line,
                str,
            },
            units,
        ))
    }

    /// Copies unit `unit` into `info`, and its line program into `line`; returns the
    /// `.debug_info` offsets its entries refer to outside itself.
    fn read_unit(
        &self,
        unit: usize,
        info: &mut Mmap,
        line: Option<&mut Mmap>,
        roots: &mut RootStrings,
    ) -> Result<Vec<u64>, ()> {
        let start = self.starts[unit];
        let end = self.end_of(unit);
        let bytes = info.range_mut(start, end - start).ok_or(())?;
        self.file
            .read_exact_at(bytes, self.info_at.file_offset + start)
            .map_err(|_| ())?;
        let bytes: &[u8] = bytes;
        let section = gimli::DebugInfo::new(bytes, gimli::NativeEndian);
        let header = section.units().next().map_err(|_| ())?.ok_or(())?;
        // Split DWARF and type units are left to the `backtrace` crate.
        match header.type_() {
            gimli::UnitType::Compilation | gimli::UnitType::Partial => {}
            _ => return Err(()),
        }
        let abbrev_offset = header.debug_abbrev_offset().0;
        let abbrevs = gimli::DebugAbbrev::new(self.abbrev, gimli::NativeEndian)
            .abbreviations(header.debug_abbrev_offset())
            .map_err(|_| ())?;
        // Only a unit whose abbreviations can refer into other units (link-time optimization
        // emits them for inlined functions) is read past its root entry.
        let refers_out = declares(self.abbrev, abbrev_offset, None, |_, form| {
            matches!(form, DW_FORM_REF_ADDR | DW_FORM_INDIRECT)
        })
        .unwrap_or(true);
        let mut entries = header.entries_raw(&abbrevs, None).map_err(|_| ())?;
        let mut refs = Vec::new();
        let mut root = true;
        let mut line_program = None;
        while !entries.is_empty() && (root || refers_out) {
            let Some(abbrev) = entries.read_abbreviation().map_err(|_| ())? else {
                root = false;
                continue;
            };
            for spec in abbrev.attributes() {
                let attr = entries.read_attribute(*spec).map_err(|_| ())?;
                match attr.value() {
                    gimli::AttributeValue::DebugInfoRef(o) => {
                        let o = o.0 as u64;
                        if !(start..end).contains(&o) {
                            refs.push(o);
                        }
                    }
                    gimli::AttributeValue::DebugLineRef(o) if root => line_program = Some(o.0),
                    gimli::AttributeValue::DebugStrRef(o) if root => {
                        roots.offsets.push(o.0 as u64);
                    }
                    gimli::AttributeValue::DebugStrOffsetsIndex(_) if root => {
                        roots.elsewhere = true;
                    }
                    _ if root
                        && matches!(
                            attr.name(),
                            gimli::DW_AT_GNU_dwo_id
                                | gimli::DW_AT_GNU_dwo_name
                                | gimli::DW_AT_dwo_name
                        ) =>
                    {
                        // A skeleton of split DWARF: its entries are in a `.dwo` file.
                        return Err(());
                    }
                    _ => {}
                }
            }
            root = false;
        }
        if let Some(offset) = line_program {
            if self.read_line_program(offset as u64, line.ok_or(())?)? >= 5 {
                roots.elsewhere = true;
            }
        }
        Ok(refs)
    }

    /// Copies the line program at `offset` of `.debug_line` into `line`; returns its version.
    fn read_line_program(&self, offset: u64, line: &mut Mmap) -> Result<u16, ()> {
        let at = self.line_at.ok_or(())?;
        let length = initial_length(&self.file, at, offset).ok_or(())?;
        let bytes = line.range_mut(offset, length).ok_or(())?;
        self.file
            .read_exact_at(bytes, at.file_offset + offset)
            .map_err(|_| ())?;
        // The version follows the initial length (4 bytes, or 12 in 64-bit DWARF).
        let at = if bytes.starts_with(&[0xff; 4]) { 12 } else { 4 };
        let version = bytes.get(at..at + 2).ok_or(())?;
        Ok(u16::from_ne_bytes([version[0], version[1]]))
    }

    /// The bytes of a function's name as `addr2line` found it in `generation`: a name in
    /// `.debug_str` points into the generation's copy, where only the units' own strings were
    /// copied, so it is read from the file at its offset. The names of every function of the
    /// units read span most of `.debug_str`'s pages; those of the functions a snapshot's
    /// addresses are in, a few.
    fn name(&self, generation: &Generation, name: &[u8]) -> Option<Vec<u8>> {
        let (Some(str), Some(at)) = (&generation.str, self.str_at) else {
            return Some(name.to_vec());
        };
        let base = str.image.bytes().as_ptr() as usize;
        let offset = (name.as_ptr() as usize).wrapping_sub(base) as u64;
        if offset >= at.size {
            // Not a `.debug_str` string (an inline one, in `.debug_info`).
            return Some(name.to_vec());
        }
        read_string(&self.file, at, offset)
    }

    /// Writes a placeholder unit (a version 4 header whose abbreviations cannot be read) at the
    /// start of every run of units not `read`, spanning the run.
    fn cover_gaps(&self, read: &[bool], info: &mut Mmap) -> Result<(), ()> {
        // Its abbreviations are at the end of `.debug_abbrev`, where there are none, and
        // its root entry names abbreviation 1: the unit fails at once. (A null root entry
        // would make gimli read the whole run, a null entry a byte, looking for one.)
        let abbrev_end = u32::try_from(self.abbrev.len()).map_err(|_| ())?;
        let mut unit = 0;
        while unit < self.starts.len() {
            if read[unit] {
                unit += 1;
                continue;
            }
            let start = self.starts[unit];
            while unit < self.starts.len() && !read[unit] {
                unit += 1;
            }
            let end = self.starts.get(unit).copied().unwrap_or(self.info_at.size);
            let length = u32::try_from(end - start - 4).map_err(|_| ())?;
            if length >= 0xffff_fff0 || end - start < 12 {
                return Err(());
            }
            let header = info.range_mut(start, 12).ok_or(())?;
            header[..4].copy_from_slice(&length.to_ne_bytes());
            header[4..6].copy_from_slice(&4u16.to_ne_bytes());
            header[6..10].copy_from_slice(&abbrev_end.to_ne_bytes());
            header[10] = std::mem::size_of::<usize>() as u8;
            header[11] = 1;
        }
        Ok(())
    }

    fn context(
        &self,
        info: &Mmap,
        line: Option<&Mmap>,
        str: Option<&Paged>,
    ) -> Option<addr2line::Context<Slice>> {
        let info = info.bytes();
        let line = line.map_or(&[][..], Mmap::bytes);
        let dwarf = gimli::Dwarf::load(|id| -> Result<Slice, ()> {
            let data = match (id, str) {
                (gimli::SectionId::DebugInfo, _) => info,
                (gimli::SectionId::DebugLine, _) => line,
                (gimli::SectionId::DebugStr, Some(str)) => str.image.bytes(),
                _ => self
                    .by_name
                    .iter()
                    .find(|s| s.0 == id)
                    .map_or(&[][..], |s| s.1),
            };
            Ok(gimli::EndianSlice::new(data, gimli::NativeEndian))
        })
        .ok()?;
        addr2line::Context::from_dwarf(dwarf).ok()
    }

    /// Whether unit `unit` may hold code: its root entry (read with `pread`) has an address or
    /// address ranges, or cannot be read.
    fn may_hold_code(&self, unit: usize) -> bool {
        let (start, end) = (self.starts[unit], self.end_of(unit));
        let mut prefix = [0u8; 512];
        let len = (end - start).min(prefix.len() as u64) as usize;
        let prefix = &mut prefix[..len];
        if len < 12
            || self
                .file
                .read_exact_at(prefix, self.info_at.file_offset + start)
                .is_err()
        {
            return true;
        }
        if u32::from_ne_bytes([prefix[0], prefix[1], prefix[2], prefix[3]]) >= 0xffff_fff0 {
            return true;
        }
        // The header's length, cut to what was read: the root entry comes first.
        prefix[..4].copy_from_slice(&(len as u32 - 4).to_ne_bytes());
        let section = gimli::DebugInfo::new(&*prefix, gimli::NativeEndian);
        let Ok(Some(header)) = section.units().next() else {
            return true;
        };
        let mut at = header.header_size();
        let Some(code) = uleb(prefix, &mut at) else {
            return true;
        };
        if code == 0 {
            return false;
        }
        declares(
            self.abbrev,
            header.debug_abbrev_offset().0,
            Some(code),
            |name, form| {
                matches!(name, DW_AT_LOW_PC | DW_AT_HIGH_PC | DW_AT_RANGES)
                    || form == DW_FORM_INDIRECT
            },
        )
        .unwrap_or(true)
    }
}

/// The length (initial length field included) of the DWARF unit or program at `offset` of
/// the section at `at`, read with `pread`.
fn initial_length(file: &File, at: Placed, offset: u64) -> Option<u64> {
    let mut word = [0u8; 4];
    file.read_exact_at(&mut word, at.file_offset + offset)
        .ok()?;
    let length = match u32::from_ne_bytes(word) {
        0xffff_ffff => {
            let mut long = [0u8; 8];
            file.read_exact_at(&mut long, at.file_offset + offset + 4)
                .ok()?;
            u64::from_ne_bytes(long).checked_add(12)?
        }
        l if l >= 0xffff_fff0 => return None,
        l => u64::from(l) + 4,
    };
    (offset.checked_add(length)? <= at.size).then_some(length)
}

const DW_AT_LOW_PC: u64 = gimli::DW_AT_low_pc.0 as u64;
const DW_AT_HIGH_PC: u64 = gimli::DW_AT_high_pc.0 as u64;
const DW_AT_RANGES: u64 = gimli::DW_AT_ranges.0 as u64;
const DW_FORM_REF_ADDR: u64 = gimli::DW_FORM_ref_addr.0 as u64;
const DW_FORM_INDIRECT: u64 = gimli::DW_FORM_indirect.0 as u64;
const DW_FORM_IMPLICIT_CONST: u64 = gimli::DW_FORM_implicit_const.0 as u64;

/// An unsigned LEB128 at `*at` of `data`, moving `*at` past it.
fn uleb(data: &[u8], at: &mut usize) -> Option<u64> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let byte = *data.get(*at)?;
        *at += 1;
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Some(value);
        }
    }
    None
}

/// Whether the abbreviation table at `offset` of `.debug_abbrev` (only its declaration of
/// `code`, when given) has an attribute `wanted(name, form)` accepts; `None` when it cannot be
/// read. Read without building the table: gimli's parse of each table cost more than the rest
/// of a unit's reading in a debug build.
fn declares(
    abbrev: &[u8],
    offset: usize,
    code: Option<u64>,
    wanted: impl Fn(u64, u64) -> bool,
) -> Option<bool> {
    let mut at = offset;
    loop {
        let this = uleb(abbrev, &mut at)?;
        if this == 0 {
            // The end of the table: `code` was not in it.
            return code.map_or(Some(false), |_| None);
        }
        let _tag = uleb(abbrev, &mut at)?;
        at += 1; // DW_CHILDREN_yes or _no
        let mine = code.is_none_or(|c| c == this);
        loop {
            let name = uleb(abbrev, &mut at)?;
            let form = uleb(abbrev, &mut at)?;
            if name == 0 && form == 0 {
                break;
            }
            if form == DW_FORM_IMPLICIT_CONST {
                uleb(abbrev, &mut at)?; // its value (signed, but only skipped)
            }
            if mine && wanted(name, form) {
                return Some(true);
            }
        }
        if code == Some(this) {
            return Some(false);
        }
    }
}

/// The start of every unit of `.debug_info`, following the chain of unit lengths with `pread`
/// (a few bytes a unit: mapped, each read would make 64 KiB resident).
fn unit_starts(file: &File, at: Placed) -> Option<Vec<u64>> {
    let mut starts = Vec::new();
    let mut offset = 0;
    while offset < at.size {
        starts.push(offset);
        offset += initial_length(file, at, offset)?;
    }
    Some(starts)
}

/// `.debug_aranges` as `[begin, end)` → unit index, sorted; `None` when an entry names an
/// offset that starts no unit.
fn arange_ranges(aranges: &'static [u8], starts: &[u64]) -> Option<Vec<(u64, u64, usize)>> {
    let mut out = Vec::new();
    let mut headers = gimli::DebugAranges::new(aranges, gimli::NativeEndian).headers();
    while let Some(header) = headers.next().ok()? {
        let offset = header.debug_info_offset().0 as u64;
        let unit = starts.binary_search(&offset).ok()?;
        let mut entries = header.entries();
        while let Some(entry) = entries.next().ok()? {
            let range = entry.range();
            if range.begin < range.end {
                out.push((range.begin, range.end, unit));
            }
        }
    }
    out.sort_unstable();
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::super::symbolize::by_backtrace;
    use super::*;
    use object::ObjectSymbol as _;

    #[inline(never)]
    fn marker_one() -> usize {
        std::hint::black_box(1)
    }

    #[inline(never)]
    fn marker_two() -> Vec<u8> {
        std::hint::black_box(vec![2; 3])
    }

    /// The loaded objects and the id of the test binary's; `None` (the test has nothing to
    /// check) when the test binary is not the executable.
    fn test_binary() -> Option<(super::super::objects::Objects, u64)> {
        let mut objects = super::super::objects::Objects::default();
        objects.refresh();
        let object = objects
            .find(marker_one as *const () as usize)
            .expect("the test binary is loaded");
        if !object.main {
            eprintln!("the test binary is not the executable: nothing to check");
            return None;
        }
        let id = object.id;
        Some((objects, id))
    }

    /// Return addresses of this thread's stack, minus one (the call instructions).
    fn calls_here() -> Vec<usize> {
        let mut out = Vec::new();
        backtrace::trace(|frame| {
            out.push((frame.ip() as usize).saturating_sub(1));
            true
        });
        out
    }

    #[test]
    fn reads_few_units_and_agrees_with_the_backtrace_crate() {
        let Some((objects, id)) = test_binary() else {
            return;
        };
        let object = objects.by_id(id).unwrap();
        let mut addresses = calls_here();
        addresses.push(marker_one as *const () as usize);
        addresses.push(marker_two as *const () as usize);
        addresses.retain(|&a| objects.find(a).is_some_and(|o| o.id == id));
        assert!(addresses.len() >= 4, "{addresses:?}");
        let svmas: Vec<u64> = addresses
            .iter()
            .map(|&a| a.wrapping_sub(object.bias) as u64)
            .collect();
        let mut exe = Executable::default();
        assert!(
            exe.prepare(object, &svmas),
            "the test binary's DWARF is read"
        );
        let (read, all) = exe.units_read().unwrap();
        assert!(read >= 1 && read < all, "{read} of {all} units read");
        // Without link-time optimization (a debug build) units hardly refer to each other;
        // with it, the units an inlined function's entries point to come along (CI runs
        // these tests with `lto = "fat"` too).
        if cfg!(debug_assertions) {
            assert!(read * 4 < all, "{read} of {all} units read");
        }
        let mut resolved = 0;
        for (&address, &svma) in addresses.iter().zip(&svmas) {
            let Some(frames) = exe.frames(svma) else {
                continue;
            };
            // The symbolizer's lookup through the crate takes a return address: it looks one
            // byte before it, and the crate one more.
            assert_eq!(frames, by_backtrace(address + 2), "at {address:#x}");
            resolved += 1;
        }
        assert!(resolved >= 4, "{resolved} of {} resolved", addresses.len());
        let frames = exe.frames(svmas[svmas.len() - 2]).unwrap();
        assert!(
            frames[0].0.as_deref().unwrap().ends_with("marker_one"),
            "{frames:?}"
        );
        assert!(frames[0].1.as_deref().unwrap().ends_with("unitwise.rs"));
    }

    #[test]
    fn an_address_without_dwarf_is_named_from_the_symbol_table() {
        let Some((objects, id)) = test_binary() else {
            return;
        };
        let object = objects.by_id(id).unwrap();
        // The C `main` rustc emits has no DWARF: no `.debug_aranges` entry covers it.
        let map = Mmap::open(EXE.as_ref()).unwrap();
        let elf = object::File::parse(map.bytes()).unwrap();
        let main = elf
            .symbol_map()
            .symbols()
            .iter()
            .find(|s| s.name() == "main")
            .expect("the test binary has a C main")
            .address();
        let mut exe = Executable::default();
        assert!(exe.prepare(object, &[main + 1]));
        let units = exe.state.as_ref().unwrap().as_ref().unwrap();
        assert_eq!(units.unit_of(main + 1), None, "no unit covers main");
        assert_eq!(
            exe.frames(main + 1),
            Some(vec![(Some("main".to_owned()), None, 0)])
        );
        assert_eq!(
            by_backtrace((main + 3) as usize + object.bias),
            vec![(Some("main".to_owned()), None, 0)]
        );
    }

    #[test]
    fn units_with_code_are_told_from_units_of_types() {
        let Some((objects, id)) = test_binary() else {
            return;
        };
        let object = objects.by_id(id).unwrap();
        let mut exe = Executable::default();
        let svma = (marker_one as *const () as usize).wrapping_sub(object.bias);
        assert!(exe.prepare(object, &[svma as u64]));
        let units = exe.state.as_ref().unwrap().as_ref().unwrap();
        let code = |u: usize| units.source.may_hold_code(u);
        // Every unit `.debug_aranges` lists holds code, and reads so.
        for r in &units.ranges {
            assert!(code(r.2), "unit {} at {:#x}", r.2, units.source.starts[r.2]);
        }
        // rustc puts most types in units of their own, without code.
        let typeonly = (0..units.source.starts.len()).filter(|&u| !code(u)).count();
        assert!(
            typeonly > 0,
            "{} units, all with code",
            units.source.starts.len()
        );
        assert!(units.eager.iter().all(|&u| code(u)));
    }

    #[test]
    fn many_batches_merge_into_one_generation() {
        let Some((objects, id)) = test_binary() else {
            return;
        };
        let object = objects.by_id(id).unwrap();
        let mut exe = Executable::default();
        assert!(exe.prepare(object, &[]));
        // The first address of each of a dozen units, one batch each.
        let units = exe.state.as_ref().unwrap().as_ref().unwrap();
        let mut seen = Vec::new();
        let mut batches = Vec::new();
        for &(begin, _, unit) in &units.ranges {
            // Code the linker dropped is listed at address 0.
            if begin != 0 && !seen.contains(&unit) && units.read_in[unit].is_none() {
                seen.push(unit);
                batches.push(begin);
            }
            if batches.len() == GENERATIONS + 4 {
                break;
            }
        }
        assert_eq!(batches.len(), GENERATIONS + 4);
        for &svma in &batches {
            assert!(exe.prepare(object, &[svma]));
            let units = exe.state.as_ref().unwrap().as_ref().unwrap();
            assert!(units.generations.len() <= GENERATIONS);
        }
        let units = exe.state.as_ref().unwrap().as_ref().unwrap();
        assert!(units.generations.len() < GENERATIONS, "merged once");
        for &svma in &batches {
            let address = svma as usize + object.bias;
            assert_eq!(
                exe.frames(svma),
                Some(by_backtrace(address + 2)),
                "{address:#x}"
            );
        }
    }

    #[test]
    fn names_files_and_lines_agree_with_the_backtrace_crate_across_the_binary() {
        // Functions the symbol table names, sampled across the binary, in one batch.
        let Some((objects, id)) = test_binary() else {
            return;
        };
        let object = objects.by_id(id).unwrap();
        let map = Mmap::open(EXE.as_ref()).unwrap();
        let elf = object::File::parse(map.bytes()).unwrap();
        let functions: Vec<u64> = elf
            .symbols()
            .filter(|s| s.kind() == object::SymbolKind::Text && s.size() > 1)
            .map(|s| s.address() + 1)
            .collect();
        let step = (functions.len() / 300).max(1);
        let svmas: Vec<u64> = functions.into_iter().step_by(step).collect();
        let mut exe = Executable::default();
        assert!(exe.prepare(object, &svmas));
        let units = exe.state.as_ref().unwrap().as_ref().unwrap();
        assert!(
            units.generations[0].str.is_some(),
            "names are read from the file, not from a copy of .debug_str"
        );
        let (mut named, mut lined) = (0, 0);
        for &svma in &svmas {
            let address = svma as usize + object.bias;
            let ours = exe.frames(svma).unwrap_or_default();
            assert_eq!(ours, by_backtrace(address + 2), "at {address:#x}");
            named += ours.iter().filter(|f| f.0.is_some()).count();
            lined += ours.iter().filter(|f| f.2 != 0).count();
        }
        assert!(named > 200 && lined > 100, "{named} names, {lined} lines");
    }

    #[test]
    fn a_later_batch_adds_its_units_and_keeps_the_earlier_ones() {
        let Some((objects, id)) = test_binary() else {
            return;
        };
        let object = objects.by_id(id).unwrap();
        let svma = |f: usize| f.wrapping_sub(object.bias) as u64;
        let ours = svma(marker_one as *const () as usize);
        let mut exe = Executable::default();
        assert!(exe.prepare(object, &[ours]));
        let before = exe.units_read().unwrap().0;
        // The first function of a unit not read yet.
        let units = exe.state.as_ref().unwrap().as_ref().unwrap();
        let theirs = units
            .ranges
            .iter()
            .find(|r| r.0 != 0 && units.read_in[r.2].is_none())
            .expect("a unit is left")
            .0;
        assert!(exe.frames(theirs).is_none(), "not read yet");
        assert!(exe.prepare(object, &[theirs]));
        assert!(exe.units_read().unwrap().0 > before);
        let units = exe.state.as_ref().unwrap().as_ref().unwrap();
        assert_eq!(units.generations.len(), 2, "the first generation is kept");
        let name = |s| exe.frames(s).unwrap()[0].0.clone().unwrap();
        assert!(name(ours).ends_with("marker_one"), "{}", name(ours));
        let address = theirs as usize + object.bias;
        assert_eq!(exe.frames(theirs), Some(by_backtrace(address + 2)));
    }
}

/// The raw abbreviation reader on a hand-made table: no file, no loaded object, so Miri runs it
/// (the tests above read the test binary and are not for Miri).
#[cfg(test)]
mod abbreviation_tests {
    use super::*;

    #[test]
    fn abbreviation_tables_are_read_for_forms_and_names() {
        // Code 1: DW_TAG_compile_unit, children, DW_AT_name strp, DW_AT_low_pc addr.
        // Code 2: DW_TAG_subprogram, no children, DW_AT_const_value implicit_const -1,
        // DW_AT_abstract_origin ref_addr. Then the end of the table.
        let table = [
            1, 0x11, 1, 0x03, 0x0e, 0x11, 0x01, 0, 0, //
            2, 0x2e, 0, 0x1c, 0x21, 0x7f, 0x31, 0x10, 0, 0, //
            0,
        ];
        let ref_addr = |_, form| form == DW_FORM_REF_ADDR;
        let code = |name, _| matches!(name, DW_AT_LOW_PC | DW_AT_HIGH_PC | DW_AT_RANGES);
        assert_eq!(declares(&table, 0, None, ref_addr), Some(true));
        assert_eq!(declares(&table, 0, Some(1), ref_addr), Some(false));
        assert_eq!(declares(&table, 0, Some(2), ref_addr), Some(true));
        assert_eq!(declares(&table, 0, Some(1), code), Some(true));
        assert_eq!(declares(&table, 0, Some(2), code), Some(false));
        assert_eq!(declares(&table, 0, Some(3), code), None, "no such code");
        assert_eq!(declares(&table[..12], 0, None, ref_addr), None, "cut short");
        assert_eq!(declares(&table[9..], 0, Some(1), code), None);
        assert_eq!(uleb(&[0xe5, 0x8e, 0x26], &mut 0), Some(624_485));
        assert_eq!(uleb(&[0x80], &mut 0), None);
    }
}
