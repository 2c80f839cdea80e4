//! Record batches as klink reads them from produce requests and fetched
//! data: header parsing, the batch walk, CRC checks, the producer rewrite,
//! renumbering for a translated view, and compacted batches cut at holes.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;

use klink::batch;

fuzz_target!(|data: &[u8]| {
    let _ = batch::header(data);
    let _ = batch::crc_ok(data);
    if let Ok(ranges) = batch::batches(data) {
        for range in ranges {
            let mut copy = data[range].to_vec();
            let _ = batch::rewrite_producer(&mut copy, 42, 3, 17);
            let _ = batch::crc_ok(&copy);
        }
    }
    let _ = batch::scan_batches(data);
    let records = Bytes::copy_from_slice(data);
    if let Ok(walked) = klink::mirror::walk(&records, &[]) {
        let _ = klink::mirror::compacted::cut_at_holes(&records, walked);
    }
});
