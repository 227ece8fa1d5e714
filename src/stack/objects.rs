//! The objects loaded in this process (the executable, its libraries, plugins), as glibc's
//! `dl_iterate_phdr` lists them (cold path, snapshot time only).
//!
//! The list is read again only when glibc's load or unload counter (`dlpi_adds`, `dlpi_subs`)
//! has moved since the last read (36 ns; a read of a process with 7 objects takes ~7 µs, most of
//! it `stat`). Each load gets an id, kept from one read to the next while the object's path,
//! load address and GNU build-id stay the same (and, for an object without a build-id, its
//! file's inode, size and modification time), so names resolved in one object are never taken
//! for another one loaded later at the same addresses. An object that a read saw gone gets a new
//! id when it is loaded again.

use std::ffi::{CStr, OsString};
use std::os::unix::ffi::OsStringExt;
use std::path::PathBuf;

/// glibc's load and unload counters: `(dlpi_adds, dlpi_subs)`.
pub(crate) type Counters = (u64, u64);

/// One loaded object.
#[derive(Debug)]
pub(crate) struct Object {
    /// Unique to this load, as far as the checks above can tell; never 0.
    pub(crate) id: u64,
    /// The executable: never unloaded, its `dlpi_name` empty.
    pub(crate) main: bool,
    /// The file it was loaded from, as `dlpi_name` gives it (empty for the executable; not a
    /// file for the vDSO).
    pub(crate) path: PathBuf,
    /// Load address: added to the file's addresses to give the addresses in memory.
    pub(crate) bias: usize,
    /// The GNU build-id note, read from memory.
    pub(crate) build_id: Option<Vec<u8>>,
    /// `(dev, ino, size, mtime)` of `path` when the object was first listed.
    file: Option<(u64, u64, u64, i64)>,
    /// The PT_LOAD segments in memory, `[start, end)`.
    segments: Vec<(usize, usize)>,
}

impl Object {
    fn same_load(&self, other: &Object) -> bool {
        self.main && other.main
            || self.path == other.path
                && self.bias == other.bias
                && self.build_id == other.build_id
                && (self.build_id.is_some() || self.file == other.file)
    }
}

/// Where an address is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Place {
    /// In the loaded object of this id.
    Object(u64),
    /// In no loaded object, but where an object was seen before it was unloaded.
    Unloaded,
    /// In no object ever seen (code generated at run time, a bogus address).
    Nowhere,
    /// Not known: the loaded objects cannot be listed on this platform.
    Unlisted,
}

/// The list of loaded objects.
#[derive(Debug, Default)]
pub(crate) struct Objects {
    listed: bool,
    counters: Option<Counters>,
    list: Vec<Object>,
    /// Every PT_LOAD segment `(start, end, index into list)`, sorted by start.
    ranges: Vec<(usize, usize, usize)>,
    /// Address ranges of objects seen loaded and since unloaded, newest last, at most
    /// [`MAX_GONE`] of them.
    gone: Vec<(usize, usize)>,
    next_id: u64,
}

/// Enough for a program that reloads plugins all day: older ranges are forgotten (an address
/// there then reads as `Place::Nowhere`).
const MAX_GONE: usize = 1024;

impl Objects {
    /// Reads the list again when objects were loaded or unloaded since the last read; returns
    /// whether it did.
    pub(crate) fn refresh(&mut self) -> bool {
        if self.listed && self.counters == counters() {
            return false;
        }
        self.listed = true;
        let (counters, fresh) = list();
        let mut fresh: Vec<Object> = fresh.into_iter().map(|raw| raw.into_object()).collect();
        for object in &mut fresh {
            object.id = match self.list.iter().find(|old| old.same_load(object)) {
                Some(old) => old.id,
                None => {
                    self.next_id += 1;
                    self.next_id
                }
            };
        }
        for old in &self.list {
            if !fresh.iter().any(|o| o.id == old.id) {
                self.gone.extend(old.segments.iter().copied());
            }
        }
        if self.gone.len() > MAX_GONE {
            self.gone.drain(..self.gone.len() - MAX_GONE);
        }
        self.list = fresh;
        self.ranges = self
            .list
            .iter()
            .enumerate()
            .flat_map(|(i, o)| o.segments.iter().map(move |&(s, e)| (s, e, i)))
            .collect();
        self.ranges.sort_unstable();
        self.counters = counters;
        true
    }

    /// The counters as of the last read.
    pub(crate) fn counters(&self) -> Option<Counters> {
        self.counters
    }

    /// The objects as of the last read.
    pub(crate) fn list(&self) -> &[Object] {
        &self.list
    }

    /// The loaded object holding `address`.
    pub(crate) fn find(&self, address: usize) -> Option<&Object> {
        let i = self.ranges.partition_point(|r| r.0 <= address);
        let &(_, end, index) = self.ranges.get(i.checked_sub(1)?)?;
        (address < end).then(|| &self.list[index])
    }

    pub(crate) fn place(&self, address: usize) -> Place {
        if self.list.is_empty() {
            return Place::Unlisted;
        }
        match self.find(address) {
            Some(o) => Place::Object(o.id),
            None if self.gone.iter().any(|&(s, e)| (s..e).contains(&address)) => Place::Unloaded,
            None => Place::Nowhere,
        }
    }

    pub(crate) fn by_id(&self, id: u64) -> Option<&Object> {
        self.list.iter().find(|o| o.id == id)
    }
}

/// An object as `dl_iterate_phdr` gives it, before it is compared with earlier reads.
struct Raw {
    name: Vec<u8>,
    bias: usize,
    segments: Vec<(usize, usize)>,
    build_id: Option<Vec<u8>>,
}

impl Raw {
    fn into_object(self) -> Object {
        let main = self.name.is_empty();
        let path = PathBuf::from(OsString::from_vec(self.name));
        let file = (!main)
            .then(|| std::fs::metadata(&path).ok())
            .flatten()
            .map(|m| {
                use std::os::unix::fs::MetadataExt;
                (m.dev(), m.ino(), m.size(), m.mtime())
            });
        Object {
            id: 0,
            main,
            path,
            bias: self.bias,
            build_id: self.build_id,
            file,
            segments: self.segments,
        }
    }
}

/// The counters alone: the first object's `dl_phdr_info` carries them.
#[cfg(not(target_os = "linux"))]
pub(crate) fn counters() -> Option<Counters> {
    None
}

#[cfg(not(target_os = "linux"))]
fn list() -> (Option<Counters>, Vec<Raw>) {
    (None, Vec::new())
}

/// The counters alone: the first object's `dl_phdr_info` carries them.
#[cfg(target_os = "linux")]
pub(crate) fn counters() -> Option<Counters> {
    unsafe extern "C" fn first(
        info: *mut libc::dl_phdr_info,
        size: libc::size_t,
        data: *mut libc::c_void,
    ) -> libc::c_int {
        // SAFETY: glibc passes a valid `dl_phdr_info` of `size` bytes, and our Option as `data`.
        unsafe {
            if size >= std::mem::size_of::<libc::dl_phdr_info>() {
                *(data as *mut Option<Counters>) = Some(((*info).dlpi_adds, (*info).dlpi_subs));
            }
        }
        1
    }
    let mut counters: Option<Counters> = None;
    super::iterating_loaded_objects(|| {
        // SAFETY: `first` matches the callback type and writes only our local.
        unsafe {
            libc::dl_iterate_phdr(Some(first), (&mut counters as *mut Option<Counters>).cast())
        }
    })?;
    counters
}

/// Every loaded object, with the counters read in the same iteration (the loader's lock is held
/// throughout, so they agree with the list).
#[cfg(target_os = "linux")]
fn list() -> (Option<Counters>, Vec<Raw>) {
    struct Out {
        counters: Option<Counters>,
        objects: Vec<Raw>,
    }
    unsafe extern "C" fn each(
        info: *mut libc::dl_phdr_info,
        size: libc::size_t,
        data: *mut libc::c_void,
    ) -> libc::c_int {
        // SAFETY: glibc passes a valid `dl_phdr_info` of `size` bytes whose `dlpi_phdr` has
        // `dlpi_phnum` entries and whose `dlpi_name` is NULL or NUL-terminated, and our `Out`
        // as `data`. The object stays mapped while the callback runs (glibc holds its lock).
        unsafe {
            let out = &mut *(data as *mut Out);
            let info = &*info;
            if out.counters.is_none() && size >= std::mem::size_of::<libc::dl_phdr_info>() {
                out.counters = Some((info.dlpi_adds, info.dlpi_subs));
            }
            let phdrs = if info.dlpi_phdr.is_null() {
                &[][..]
            } else {
                std::slice::from_raw_parts(info.dlpi_phdr, info.dlpi_phnum as usize)
            };
            let bias = info.dlpi_addr as usize;
            let segments: Vec<(usize, usize)> = phdrs
                .iter()
                .filter(|ph| ph.p_type == libc::PT_LOAD && ph.p_memsz > 0)
                .map(|ph| {
                    let start = bias.wrapping_add(ph.p_vaddr as usize);
                    (start, start.wrapping_add(ph.p_memsz as usize))
                })
                .collect();
            let build_id = phdrs
                .iter()
                .filter(|ph| ph.p_type == libc::PT_NOTE)
                .find_map(|ph| {
                    let start = bias.wrapping_add(ph.p_vaddr as usize);
                    let end = start.checked_add(ph.p_memsz as usize)?;
                    // Only a note inside a loaded segment is readable.
                    segments
                        .iter()
                        .any(|&(s, e)| s <= start && end <= e)
                        .then(|| {
                            build_id_in(std::slice::from_raw_parts(start as *const u8, end - start))
                        })
                        .flatten()
                });
            let name = if info.dlpi_name.is_null() {
                Vec::new()
            } else {
                CStr::from_ptr(info.dlpi_name).to_bytes().to_vec()
            };
            out.objects.push(Raw {
                name,
                bias,
                segments,
                build_id,
            });
            0
        }
    }
    let mut out = Out {
        counters: None,
        objects: Vec::new(),
    };
    // `each` grows `out.objects`: the caller holds the reentrancy guard, so that allocation
    // goes to `System` untraced and takes no lock of ours.
    let _ = super::iterating_loaded_objects(|| {
        // SAFETY: `each` matches the callback type and only reads what glibc passes it.
        unsafe { libc::dl_iterate_phdr(Some(each), (&mut out as *mut Out).cast()) }
    });
    (out.counters, out.objects)
}

/// The descriptor of the `NT_GNU_BUILD_ID` note among `notes` (a PT_NOTE segment's bytes).
#[cfg_attr(not(target_os = "linux"), allow(dead_code))]
fn build_id_in(mut notes: &[u8]) -> Option<Vec<u8>> {
    const NT_GNU_BUILD_ID: u32 = 3;
    let word = |b: &[u8], at: usize| -> Option<u32> {
        Some(u32::from_ne_bytes(b.get(at..at + 4)?.try_into().ok()?))
    };
    let align4 = |n: usize| n.checked_add(3).map(|n| n & !3);
    while notes.len() >= 12 {
        let name_size = word(notes, 0)? as usize;
        let desc_size = word(notes, 4)? as usize;
        let kind = word(notes, 8)?;
        let desc_at = 12usize.checked_add(align4(name_size)?)?;
        let next = desc_at.checked_add(align4(desc_size)?)?;
        let name = notes.get(12..12 + name_size)?;
        let desc = notes.get(desc_at..desc_at + desc_size)?;
        if kind == NT_GNU_BUILD_ID && name == b"GNU\0" {
            return Some(desc.to_vec());
        }
        notes = notes.get(next..)?;
    }
    None
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    #[test]
    fn the_executable_is_listed_first_and_found() {
        let mut objects = Objects::default();
        assert!(objects.refresh(), "the first read lists");
        assert!(!objects.refresh(), "nothing loaded since");
        let main = &objects.list()[0];
        assert!(main.main);
        let here = the_executable_is_listed_first_and_found as *const () as usize;
        let found = objects
            .find(here)
            .expect("this function is in a loaded object");
        assert_eq!(found.id, main.id, "a unit test binary holds its own code");
        assert_eq!(objects.place(here), Place::Object(main.id));
        assert_eq!(objects.place(8), Place::Nowhere);
        let libc_fn = libc::getpid as *const () as usize;
        let libc_object = objects.find(libc_fn).expect("libc is loaded");
        assert!(
            libc_object.path.to_string_lossy().contains("libc"),
            "{:?}",
            libc_object.path
        );
    }

    #[test]
    fn build_ids_are_read_from_notes() {
        let mut notes = Vec::new();
        // An unrelated note first (an ABI tag), then the build-id.
        for (name, kind, desc) in [
            (
                &b"GNU\0"[..],
                1u32,
                &[0u8, 0, 0, 0, 3, 0, 0, 0, 2, 0, 0, 0][..],
            ),
            (&b"GNU\0"[..], 3u32, &[0xab, 0xcd, 0xef][..]),
        ] {
            notes.extend((name.len() as u32).to_ne_bytes());
            notes.extend((desc.len() as u32).to_ne_bytes());
            notes.extend(kind.to_ne_bytes());
            notes.extend(name);
            notes.extend(desc);
            while notes.len() % 4 != 0 {
                notes.push(0);
            }
        }
        assert_eq!(build_id_in(&notes), Some(vec![0xab, 0xcd, 0xef]));
        assert_eq!(build_id_in(&notes[..20]), None, "cut short");
    }
}
