//! Memory advice: transparent huge pages for a preloaded heap.

use std::io;

/// Asks for transparent huge pages on this process's private anonymous memory (heap and
/// anonymous mappings) and collapses what is already there (`MADV_COLLAPSE`, Linux 6.1+; ignored
/// where unsupported). A process with a large preloaded heap then forks with a fraction of the
/// page-table work. Returns the bytes advised. Not async-signal-safe (it reads
/// `/proc/self/maps`): call it from ordinary code.
pub(crate) fn advise_huge_pages() -> io::Result<usize> {
    const HUGE: usize = 2 << 20;
    const MADV_COLLAPSE: libc::c_int = 25;
    let maps = std::fs::read_to_string("/proc/self/maps")?;
    let mut advised = 0;
    for line in maps.lines() {
        let mut fields = line.split_whitespace();
        let (Some(range), Some(perms)) = (fields.next(), fields.next()) else {
            continue;
        };
        let path = fields.nth(3).unwrap_or("");
        if perms != "rw-p" || !(path.is_empty() || path == "[heap]") {
            continue;
        }
        let Some((a, b)) = range.split_once('-') else {
            continue;
        };
        let (Ok(a), Ok(b)) = (usize::from_str_radix(a, 16), usize::from_str_radix(b, 16)) else {
            continue;
        };
        let start = a.next_multiple_of(HUGE);
        let end = b / HUGE * HUGE;
        if end <= start {
            continue;
        }
        // SAFETY: madvise on a range of our own mappings only changes paging advice.
        unsafe {
            if libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_HUGEPAGE) == 0 {
                advised += end - start;
                libc::madvise(start as *mut libc::c_void, end - start, MADV_COLLAPSE);
            }
        }
    }
    Ok(advised)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn huge_page_advice_succeeds_on_our_own_memory() {
        let big = vec![1u8; 8 << 20];
        assert!(advise_huge_pages().expect("/proc/self/maps") >= 2 << 20);
        assert_eq!(big.iter().map(|&b| b as usize).sum::<usize>(), 8 << 20);
    }
}
