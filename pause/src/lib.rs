//! What podrun's per-pod processes (pause and the shim) share: keeping their resident set
//! small.

/// Unmaps, from this process only, the pages of its own executable that it has never
/// written: text and read-only data. They stay in the page cache, shared by every pod's
/// copy of the binary, and fault back in (with the kernel's fault-around) when they are
/// next used. A static binary gets most of itself mapped during start-up, which costs each
/// pod's process that much RSS for code it never runs again; after this its RSS holds what
/// it touches from here on. Mappings with any copied-on-write page (relocated data), in
/// memory or in swap, are left alone, since dropping them would lose the writes. Best
/// effort: any failure (no /proc, say) leaves everything as it was.
pub fn release_executable_pages() {
    // Ranges are gathered first and released last, after the strings are freed: touching
    // code or read-only data after a release would only fault it straight back in.
    let mut ranges = [(0usize, 0usize); MAX_RANGES];
    let count = executable_ranges(&mut ranges);
    for &(start, end) in &ranges[..count] {
        // SAFETY: each range is one private, non-writable mapping of our executable with
        // no anonymous (copied) page, so every page in it equals the file's content:
        // dropping the page-table entries changes nothing but where the next access
        // reads it from.
        unsafe {
            libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_DONTNEED);
        }
    }
}

/// More than the segments a static executable has.
const MAX_RANGES: usize = 16;

/// Fills `out` with the never-written mappings of our executable; returns how many.
fn executable_ranges(out: &mut [(usize, usize); MAX_RANGES]) -> usize {
    let (Ok(exe), Ok(smaps)) = (
        std::fs::read_link("/proc/self/exe"),
        std::fs::read_to_string("/proc/self/smaps"),
    ) else {
        return 0;
    };
    let exe = exe.to_string_lossy();
    let mut count = 0;
    let mut candidate: Option<(usize, usize)> = None;
    let mut keep = |range: Option<(usize, usize)>, count: &mut usize| {
        if let Some(r) = range.filter(|_| *count < MAX_RANGES) {
            out[*count] = r;
            *count += 1;
        }
    };
    for line in smaps.lines() {
        if let Some(mapping) = Mapping::parse(line) {
            keep(candidate.take(), &mut count);
            candidate = (mapping.path == exe && mapping.never_written())
                .then_some((mapping.start, mapping.end));
        } else if copied_pages(line) {
            candidate = None;
        }
    }
    keep(candidate, &mut count);
    count
}

/// Does this smaps field say the mapping holds copied-on-write pages, in memory
/// (`Anonymous:`) or swapped out (`Swap:`)? Dropping those would lose their writes.
fn copied_pages(line: &str) -> bool {
    ["Anonymous:", "Swap:"].iter().any(|field| {
        line.strip_prefix(field)
            .is_some_and(|kb| kb.trim().trim_end_matches("kB").trim() != "0")
    })
}

/// A mapping's header line in /proc/PID/smaps: `start-end perms offset dev inode [path]`.
struct Mapping<'a> {
    start: usize,
    end: usize,
    perms: &'a str,
    path: &'a str,
}

impl<'a> Mapping<'a> {
    fn parse(line: &'a str) -> Option<Mapping<'a>> {
        let mut fields = line.splitn(6, ' ');
        let (start, end) = fields.next()?.split_once('-')?;
        let perms = fields.next()?;
        let (start, end) = (
            usize::from_str_radix(start, 16).ok()?,
            usize::from_str_radix(end, 16).ok()?,
        );
        let path = fields.nth(3).unwrap_or_default().trim_start();
        Some(Mapping {
            start,
            end,
            perms,
            path,
        })
    }

    /// Private and not writable (text, read-only data).
    fn never_written(&self) -> bool {
        let p = self.perms.as_bytes();
        p.len() == 4 && p[0] == b'r' && p[1] == b'-' && p[3] == b'p'
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_mapping_headers_and_not_fields() {
        let m = Mapping::parse(
            "7f8961000000-7f8961100000 r-xp 00001000 fd:00 1234     /usr/local/bin/podrun-pause",
        )
        .unwrap();
        assert_eq!((m.start, m.end), (0x7f8961000000, 0x7f8961100000));
        assert_eq!(m.path, "/usr/local/bin/podrun-pause");
        assert!(m.never_written());
        let heap =
            Mapping::parse("555564be4000-555564c06000 rw-p 00000000 00:00 0  [heap]").unwrap();
        assert!(!heap.never_written());
        assert!(Mapping::parse("Rss:                 120 kB").is_none());
        assert!(copied_pages("Anonymous:            4 kB"));
        assert!(copied_pages("Swap:                 8 kB"));
        assert!(!copied_pages("Swap:                 0 kB"));
        assert!(!copied_pages("SwapPss:              8 kB"));
        assert!(Mapping::parse("VmFlags: rd ex mr mw me").is_none());
    }

    #[test]
    fn releasing_keeps_the_process_working() {
        release_executable_pages();
        // Code and read-only data fault back in from the page cache.
        assert_eq!(format!("{}", 6 * 7), "42");
    }
}
