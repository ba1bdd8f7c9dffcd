//! The one strict image decoder: every image the project reads (`vlm3d detect` files, dataset examples in
//! `eval`, the demo and the trainer, camera messages) goes through here, so a truncated or corrupt picture is
//! an input error everywhere instead of a half-grey image that still yields boxes.
//!
//! The `image` crate alone is too lenient: its JPEG decoder fills a truncated file's missing rows with grey
//! and returns success. So before decoding, a JPEG's marker structure is walked (start-of-image, segments by
//! their lengths, scans, end-of-image) and a PNG's chunks are walked up to `IEND`; only a structurally
//! complete file reaches the decoder, whose own errors are reported too. Sizes are bounded by
//! [`MAX_SIDE`] before any pixel buffer is allocated.
//!
//! Every error is an [`Error::Invalid`] whose `what` is the caller's `source` (`"CAM_FRONT image of sample
//! …"`, `"image /path/to/file.jpg"`) and whose `why` says what was wrong.
use std::io::Cursor;
use std::path::Path;

use image::{ImageFormat, RgbImage};

use crate::{Error, Result};

/// Largest accepted width or height, in pixels (a sanity bound against corrupt headers and decompression
/// bombs; camera images are far smaller).
pub const MAX_SIDE: u32 = 16384;

/// Start-of-image: what every JPEG starts with (a marker segment's 0xFF follows).
const JPEG_MAGIC: [u8; 2] = [0xFF, 0xD8];
const PNG_MAGIC: [u8; 8] = [0x89, b'P', b'N', b'G', 0x0D, 0x0A, 0x1A, 0x0A];

/// The codecs this module decodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Codec {
    Jpeg,
    Png,
}

impl Codec {
    fn name(self) -> &'static str {
        match self {
            Codec::Jpeg => "JPEG",
            Codec::Png => "PNG",
        }
    }

    fn image_format(self) -> ImageFormat {
        match self {
            Codec::Jpeg => ImageFormat::Jpeg,
            Codec::Png => ImageFormat::Png,
        }
    }
}

/// Decodes a `sensor_msgs/CompressedImage` payload (or any JPEG/PNG bytes) into RGB.
///
/// `format` is the message's `format` field: `"jpeg"`, `"jpg"`, `"png"`, the `image_transport` form
/// `"rgb8; jpeg compressed bgr8"` / `"bgr8; png compressed bgr8"`, or `""` to sniff the codec from the magic
/// bytes. A stated codec must agree with the bytes' magic (a mismatch is an error naming both). The decoded
/// image is in RGB order whatever the `image_transport` encodings say: JPEG and PNG files store standard
/// colour, and OpenCV's encoder converts BGR input when writing them. `compressedDepth` and codecs other than
/// JPEG and PNG are errors.
///
/// Errors (all [`Error::Invalid`] naming `source`): empty data, unsupported or mismatched format, a JPEG or PNG
/// that is truncated or structurally corrupt, a decoder error, a zero or over-[`MAX_SIDE`] width or height.
pub fn decode_compressed(data: &[u8], format: &str, source: &str) -> Result<RgbImage> {
    let bad = |why: String| Error::invalid(source, why);
    if data.is_empty() {
        return Err(bad("empty image data".into()));
    }
    let sniffed = sniff(data);
    let codec = match codec_of_format(format).map_err(&bad)? {
        None => sniffed.ok_or_else(|| bad(unrecognized(data)))?,
        Some(stated) => match sniffed {
            Some(actual) if actual == stated => stated,
            Some(actual) => {
                return Err(bad(format!(
                    "format {format:?} says {} but the data is {}",
                    stated.name(),
                    actual.name()
                )))
            }
            None => {
                return Err(bad(format!(
                "format {format:?} says {} but the data does not start with a {} signature ({})",
                stated.name(),
                stated.name(),
                unrecognized(data)
            )))
            }
        },
    };
    let (width, height) = match codec {
        Codec::Jpeg => check_jpeg(data),
        Codec::Png => check_png(data),
    }
    .map_err(&bad)?;
    check_size(width, height, codec.name()).map_err(&bad)?;
    decode_checked(data, codec, source)
}

/// Decodes JPEG or PNG bytes, the codec sniffed from the magic bytes: [`decode_compressed`] with an empty
/// format.
pub fn decode_image_bytes(data: &[u8], source: &str) -> Result<RgbImage> {
    decode_compressed(data, "", source)
}

/// Reads and decodes a JPEG or PNG file (the codec sniffed from its content, not its name).
///
/// Errors: [`Error::Io`] with the path when it cannot be read; otherwise those of [`decode_compressed`], whose
/// messages name the file.
pub fn read_image_file(path: &Path) -> Result<RgbImage> {
    let data = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    decode_image_bytes(&data, &format!("image {}", path.display()))
}

/// Converts a `sensor_msgs/Image` into RGB.
///
/// Encodings: `rgb8`, `bgr8` (channels swapped into RGB), `mono8` (grey replicated), `rgba8`, `bgra8` (alpha
/// dropped). `step` is the row length in bytes (at least `width` × bytes per pixel; rows may be padded) and
/// `data` must hold `step` × `height` bytes (more is ignored).
///
/// Errors (all [`Error::Invalid`] naming `source`): an unknown encoding (named), a zero or over-[`MAX_SIDE`]
/// width or height, a short `step`, short `data`.
pub fn decode_raw(
    width: u32,
    height: u32,
    encoding: &str,
    step: u32,
    data: &[u8],
    source: &str,
) -> Result<RgbImage> {
    let bad = |why: String| Error::invalid(source, why);
    // (bytes per pixel, offsets of R, G, B within a pixel)
    let (bpp, [r, g, b]): (usize, [usize; 3]) = match encoding {
        "rgb8" => (3, [0, 1, 2]),
        "bgr8" => (3, [2, 1, 0]),
        "mono8" => (1, [0, 0, 0]),
        "rgba8" => (4, [0, 1, 2]),
        "bgra8" => (4, [2, 1, 0]),
        other => {
            return Err(bad(format!(
                "unsupported sensor_msgs/Image encoding {other:?} (supported: rgb8, bgr8, mono8, rgba8, bgra8)"
            )))
        }
    };
    check_size(width, height, encoding).map_err(&bad)?;
    let row = width as u64 * bpp as u64;
    if (step as u64) < row {
        return Err(bad(format!(
            "step {step} is shorter than a {width}-pixel {encoding} row ({row} bytes)"
        )));
    }
    let needed = step as u64 * height as u64;
    if (data.len() as u64) < needed {
        return Err(bad(format!(
            "truncated {encoding} image: {} bytes of data, {width}×{height} with step {step} needs {needed}",
            data.len()
        )));
    }
    let (step, row) = (step as usize, row as usize);
    let mut out = Vec::with_capacity(width as usize * height as usize * 3);
    for line in data.chunks_exact(step).take(height as usize) {
        for px in line[..row].chunks_exact(bpp) {
            out.extend_from_slice(&[px[r], px[g], px[b]]);
        }
    }
    Ok(RgbImage::from_raw(width, height, out).expect("buffer sized from width and height"))
}

/// The codec a `CompressedImage.format` string names; `None` for an empty string (sniff).
fn codec_of_format(format: &str) -> std::result::Result<Option<Codec>, String> {
    let lower = format.trim().to_ascii_lowercase();
    if lower.is_empty() {
        return Ok(None);
    }
    if lower.contains("compresseddepth") {
        return Err(format!(
            "unsupported image format {format:?}: compressedDepth images are not camera pictures"
        ));
    }
    let words = lower
        .split(|c: char| c == ';' || c.is_whitespace())
        .filter(|w| !w.is_empty());
    for w in words {
        match w {
            "jpeg" | "jpg" => return Ok(Some(Codec::Jpeg)),
            "png" => return Ok(Some(Codec::Png)),
            _ => {}
        }
    }
    Err(format!(
        "unsupported image format {format:?} (supported: jpeg, png)"
    ))
}

fn sniff(data: &[u8]) -> Option<Codec> {
    if data.starts_with(&JPEG_MAGIC) {
        Some(Codec::Jpeg)
    } else if data.starts_with(&PNG_MAGIC) {
        Some(Codec::Png)
    } else {
        None
    }
}

/// Why bytes that are neither JPEG nor PNG cannot be decoded: the format they look like, or their first bytes.
fn unrecognized(data: &[u8]) -> String {
    let head: Vec<String> = data.iter().take(8).map(|b| format!("{b:02x}")).collect();
    match image::guess_format(data) {
        Ok(f) => format!(
            "{f:?} data is not supported (only JPEG and PNG); first bytes {}",
            head.join(" ")
        ),
        Err(_) => format!("not a JPEG or PNG image; first bytes {}", head.join(" ")),
    }
}

fn check_size(width: u32, height: u32, what: &str) -> std::result::Result<(), String> {
    if width == 0 || height == 0 {
        return Err(format!("{what} image has a zero size ({width}×{height})"));
    }
    if width > MAX_SIDE || height > MAX_SIDE {
        return Err(format!(
            "{what} image is {width}×{height}, larger than {MAX_SIDE} pixels per side"
        ));
    }
    Ok(())
}

fn decode_checked(data: &[u8], codec: Codec, source: &str) -> Result<RgbImage> {
    let bad = |why: String| Error::invalid(source, why);
    let mut limits = image::Limits::default();
    limits.max_image_width = Some(MAX_SIDE);
    limits.max_image_height = Some(MAX_SIDE);
    let decode = || {
        let mut reader = image::ImageReader::with_format(Cursor::new(data), codec.image_format());
        reader.limits(limits);
        reader.decode()
    };
    // A decoder bug on hostile bytes must not take the node down: a panic is reported as corrupt input.
    let img = std::panic::catch_unwind(decode)
        .map_err(|_| bad(format!("corrupt {}: the decoder panicked", codec.name())))?
        .map_err(|e| bad(format!("cannot decode {}: {e}", codec.name())))?;
    check_size(img.width(), img.height(), codec.name()).map_err(&bad)?;
    // `into_rgb8` moves an RGB image's buffer (JPEG's usual case) instead of copying it.
    Ok(img.into_rgb8())
}

/// Walks a JPEG's markers: SOI, the header segments by their lengths up to the first SOS, then the scans'
/// entropy-coded data (with stuffed bytes and restart markers) and any segments between scans (progressive
/// files) until EOI. Returns the frame's size from its SOF header.
fn check_jpeg(data: &[u8]) -> std::result::Result<(u32, u32), String> {
    const NO_EOI: &str = "truncated JPEG: no end-of-image marker";
    if !data.starts_with(&[0xFF, 0xD8]) {
        return Err("not a JPEG: no start-of-image marker".into());
    }
    let mut size: Option<(u32, u32)> = None;
    let mut in_scan = false;
    let mut i = 2;
    loop {
        // Find the next marker: in a scan, skip entropy-coded bytes, stuffed 0xFF00 and restart markers.
        if in_scan {
            loop {
                match data.get(i) {
                    None => return Err(NO_EOI.into()),
                    Some(0xFF) => match data.get(i + 1) {
                        None => return Err(NO_EOI.into()),
                        Some(0x00) | Some(0xD0..=0xD7) => i += 2,
                        Some(_) => break,
                    },
                    Some(_) => i += 1,
                }
            }
        }
        if data.len() < i + 2 {
            return Err(if in_scan {
                NO_EOI.into()
            } else {
                format!("truncated JPEG: the header ends at byte {}", data.len())
            });
        }
        if data[i] != 0xFF {
            return Err(format!(
                "corrupt JPEG: expected a marker at byte {i}, found 0x{:02x}",
                data[i]
            ));
        }
        let marker = data[i + 1];
        match marker {
            // Fill byte before a marker.
            0xFF => {
                i += 1;
                continue;
            }
            0xD9 => {
                if !in_scan {
                    return Err(format!(
                        "corrupt JPEG: end-of-image marker at byte {i} before any scan"
                    ));
                }
                return size.ok_or_else(|| "corrupt JPEG: no frame header (SOF)".into());
            }
            0xD8 => {
                return Err(format!(
                    "corrupt JPEG: a second start-of-image marker at byte {i}"
                ))
            }
            // Standalone markers without a length: TEM, RSTn outside a scan.
            0x01 | 0xD0..=0xD7 => {
                i += 2;
                continue;
            }
            // Reserved codes are no markers: corrupt data (typically a damaged scan).
            0x00 | 0x02..=0xBF => {
                return Err(format!(
                    "corrupt JPEG: invalid marker 0xff{marker:02x} at byte {i}"
                ));
            }
            _ => {}
        }
        // Inside the scans, a segment running past the end may as well be damaged data that looks like a marker.
        let or_corrupt = if in_scan { "or corrupt " } else { "" };
        let Some(len) = data.get(i + 2..i + 4) else {
            return Err(format!(
                "truncated {or_corrupt}JPEG: the segment of marker 0xff{marker:02x} at byte {i} is cut off"
            ));
        };
        let len = u16::from_be_bytes([len[0], len[1]]) as usize;
        if len < 2 {
            return Err(format!(
                "corrupt JPEG: marker 0xff{marker:02x} at byte {i} has length {len}"
            ));
        }
        let end = i + 2 + len;
        if end > data.len() {
            return Err(format!(
                "truncated {or_corrupt}JPEG: the segment of marker 0xff{marker:02x} at byte {i} needs {len} bytes, {} remain",
                data.len() - i - 2,
            ));
        }
        let body = &data[i + 4..end];
        match marker {
            // SOFn (not DHT 0xC4, JPG 0xC8, DAC 0xCC): precision, height, width, components.
            0xC0..=0xCF if !matches!(marker, 0xC4 | 0xC8 | 0xCC) => {
                if body.len() < 6 {
                    return Err(format!(
                        "corrupt JPEG: frame header at byte {i} is {} bytes",
                        body.len()
                    ));
                }
                let h = u16::from_be_bytes([body[1], body[2]]) as u32;
                let w = u16::from_be_bytes([body[3], body[4]]) as u32;
                size.get_or_insert((w, h));
            }
            0xDA => {
                if size.is_none() {
                    return Err(format!(
                        "corrupt JPEG: scan at byte {i} before any frame header (SOF)"
                    ));
                }
                in_scan = true;
            }
            _ => {}
        }
        i = end;
    }
}

/// Walks a PNG's chunks (length, type, data, CRC) from the signature to `IEND`. Returns the size from `IHDR`.
fn check_png(data: &[u8]) -> std::result::Result<(u32, u32), String> {
    if !data.starts_with(&PNG_MAGIC) {
        return Err("not a PNG: no PNG signature".into());
    }
    let mut size = None;
    let mut i = PNG_MAGIC.len();
    loop {
        let Some(head) = data.get(i..i + 8) else {
            return Err(if i == data.len() {
                "truncated PNG: no IEND chunk".into()
            } else {
                format!("truncated PNG: chunk header at byte {i} is cut off")
            });
        };
        let len = u32::from_be_bytes([head[0], head[1], head[2], head[3]]) as usize;
        let kind = &head[4..8];
        let name = String::from_utf8_lossy(kind).into_owned();
        let end = i.saturating_add(12).saturating_add(len);
        if end > data.len() {
            return Err(format!(
                "truncated PNG: chunk {name} at byte {i} needs {len} data bytes, {} remain",
                data.len().saturating_sub(i + 12)
            ));
        }
        match kind {
            b"IHDR" => {
                if len < 8 {
                    return Err(format!("corrupt PNG: IHDR chunk of {len} bytes"));
                }
                let d = &data[i + 8..i + 16];
                size = Some((
                    u32::from_be_bytes([d[0], d[1], d[2], d[3]]),
                    u32::from_be_bytes([d[4], d[5], d[6], d[7]]),
                ));
            }
            b"IEND" => return size.ok_or_else(|| "corrupt PNG: no IHDR chunk".into()),
            _ if size.is_none() => {
                return Err(format!("corrupt PNG: chunk {name} at byte {i} before IHDR"))
            }
            _ => {}
        }
        i = end;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A textured test picture (gradients and a block pattern, so JPEG has real entropy data).
    fn picture(w: u32, h: u32) -> RgbImage {
        RgbImage::from_fn(w, h, |x, y| {
            let block = ((x / 8 + y / 8) % 2) as u8 * 90;
            image::Rgb([
                (x * 255 / w) as u8 ^ block,
                (y * 255 / h) as u8,
                ((x + y) % 256) as u8,
            ])
        })
    }

    fn encode(img: &RgbImage, format: ImageFormat) -> Vec<u8> {
        let mut out = Cursor::new(Vec::new());
        img.write_to(&mut out, format).unwrap();
        out.into_inner()
    }

    fn jpeg() -> Vec<u8> {
        encode(&picture(96, 64), ImageFormat::Jpeg)
    }

    fn png() -> Vec<u8> {
        encode(&picture(96, 64), ImageFormat::Png)
    }

    fn err(r: Result<RgbImage>) -> String {
        match r {
            Ok(img) => panic!(
                "expected an error, decoded {}×{}",
                img.width(),
                img.height()
            ),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn valid_jpeg_and_png_decode_like_the_image_crate() {
        for (data, format) in [(jpeg(), "jpeg"), (png(), "png")] {
            let reference = image::load_from_memory(&data).unwrap().to_rgb8();
            for f in [format, ""] {
                let img = decode_compressed(&data, f, "test image").unwrap();
                assert_eq!(img.dimensions(), (96, 64));
                assert_eq!(img, reference, "format {f:?}");
            }
            assert_eq!(decode_image_bytes(&data, "test image").unwrap(), reference);
        }
        let img = decode_compressed(&jpeg(), "rgb8; jpeg compressed bgr8", "cam").unwrap();
        assert_eq!(img.dimensions(), (96, 64));
        let img = decode_compressed(&png(), "bgr8; png compressed bgr8", "cam").unwrap();
        assert_eq!(img, picture(96, 64));
    }

    #[test]
    fn truncated_jpegs_are_errors() {
        let data = jpeg();
        assert!(data.len() > 1000, "{}", data.len());
        for n in [
            0,
            1,
            2,
            10,
            100,
            1000,
            data.len() / 2,
            data.len() - 1,
            data.len() - 2,
        ] {
            let msg = err(decode_compressed(&data[..n], "jpeg", "cam_front image"));
            assert!(msg.contains("cam_front image"), "{n}: {msg}");
            if n >= 2 {
                assert!(msg.contains("truncated JPEG"), "{n}: {msg}");
            }
            let msg = err(decode_image_bytes(&data[..n], "cam_front image"));
            assert!(msg.contains("cam_front image"), "{n}: {msg}");
        }
        let msg = err(decode_compressed(&data[..1000], "jpeg", "cam"));
        assert!(
            msg.contains("truncated JPEG: no end-of-image marker"),
            "{msg}"
        );
    }

    #[test]
    fn truncated_pngs_are_errors() {
        let data = png();
        for n in [
            8,
            10,
            33,
            50,
            data.len() / 2,
            data.len() - 12,
            data.len() - 1,
        ] {
            let msg = err(decode_compressed(&data[..n], "png", "cam_front image"));
            assert!(
                msg.contains("cam_front image") && msg.contains("truncated PNG"),
                "{n}: {msg}"
            );
        }
        // The decoder alone catches a cut in the image data too (the chunk walk is a second guard).
        let cut = &data[..data.len() / 2];
        assert!(decode_checked(cut, Codec::Png, "cam").is_err());
    }

    #[test]
    fn jpeg_with_trailing_bytes_after_eoi_decodes() {
        let mut data = jpeg();
        let reference = image::load_from_memory(&data).unwrap().to_rgb8();
        data.extend_from_slice(&[0, 0, 0, 0]);
        assert_eq!(decode_compressed(&data, "jpeg", "cam").unwrap(), reference);
    }

    #[test]
    fn progressive_like_multi_scan_structure_is_walked_to_eoi() {
        // SOI, SOF2, SOS, data with a stuffed byte and a restart marker, DHT between scans, SOS, data, EOI.
        let mut d = vec![0xFF, 0xD8];
        d.extend_from_slice(&[0xFF, 0xC2, 0, 11, 8, 0, 16, 0, 32, 1, 1, 0x11, 0]);
        d.extend_from_slice(&[0xFF, 0xDA, 0, 8, 1, 1, 0, 0, 63, 0]);
        d.extend_from_slice(&[0x12, 0xFF, 0x00, 0x34, 0xFF, 0xD0, 0x56]);
        d.extend_from_slice(&[0xFF, 0xC4, 0, 4, 0xFF, 0xD9]); // an "EOI" inside a segment is skipped
        d.extend_from_slice(&[0xFF, 0xDA, 0, 8, 1, 1, 0, 0, 63, 0, 0x78]);
        assert_eq!(
            check_jpeg(&d).unwrap_err(),
            "truncated JPEG: no end-of-image marker"
        );
        d.extend_from_slice(&[0xFF, 0xD9]);
        assert_eq!(check_jpeg(&d).unwrap(), (32, 16));
    }

    #[test]
    fn corrupted_jpeg_entropy_data_never_panics() {
        let data = jpeg();
        let reference = image::load_from_memory(&data).unwrap().to_rgb8();
        for (at, span, value) in [
            (0.5, 16, 0x00),
            (0.6, 64, 0x5A),
            (0.4, 8, 0xFF),
            (0.7, 32, 0xA5),
        ] {
            let mut bad = data.clone();
            let start = (data.len() as f64 * at) as usize;
            for b in &mut bad[start..start + span] {
                *b ^= value;
            }
            assert_eq!(&bad[bad.len() - 2..], &[0xFF, 0xD9]);
            // Either an error naming the source, or a picture of the right size: never a panic.
            match decode_compressed(&bad, "jpeg", "cam_front image") {
                Ok(img) => {
                    assert_eq!(img.dimensions(), reference.dimensions());
                }
                Err(e) => assert!(e.to_string().contains("cam_front image"), "{e}"),
            }
        }
    }

    #[test]
    fn format_and_magic_must_agree() {
        let msg = err(decode_compressed(&png(), "jpeg", "cam"));
        assert!(msg.contains("JPEG") && msg.contains("PNG"), "{msg}");
        let msg = err(decode_compressed(&jpeg(), "png", "cam"));
        assert!(msg.contains("JPEG") && msg.contains("PNG"), "{msg}");
        let msg = err(decode_compressed(b"GIF89a\x01\x00\x01\x00", "", "cam"));
        assert!(
            msg.contains("Gif") && msg.contains("only JPEG and PNG"),
            "{msg}"
        );
        let msg = err(decode_compressed(b"hello world", "jpeg", "cam"));
        assert!(msg.contains("JPEG signature"), "{msg}");
        let msg = err(decode_compressed(&jpeg(), "webp", "cam"));
        assert!(msg.contains("\"webp\""), "{msg}");
        let msg = err(decode_compressed(
            &png(),
            "16UC1; compressedDepth png",
            "cam",
        ));
        assert!(msg.contains("compressedDepth"), "{msg}");
        let msg = err(decode_compressed(&[], "jpeg", "cam"));
        assert!(msg.contains("empty"), "{msg}");
    }

    #[test]
    fn zero_and_huge_sizes_are_errors() {
        // A JPEG header claiming a zero height / a huge width (the size is checked before decoding).
        let mut d = vec![0xFF, 0xD8, 0xFF, 0xC0, 0, 11, 8, 0, 0, 0, 32, 1, 1, 0x11, 0];
        d.extend_from_slice(&[0xFF, 0xDA, 0, 8, 1, 1, 0, 0, 63, 0, 0x12, 0xFF, 0xD9]);
        let msg = err(decode_compressed(&d, "jpeg", "cam"));
        assert!(msg.contains("zero size"), "{msg}");
        d[7..11].copy_from_slice(&[0, 16, 0xFF, 0xFF]);
        let msg = err(decode_compressed(&d, "jpeg", "cam"));
        assert!(msg.contains("larger than 16384"), "{msg}");
        // A PNG whose IHDR says 0 wide.
        let mut p = png();
        p[16..20].copy_from_slice(&0u32.to_be_bytes());
        let msg = err(decode_compressed(&p, "png", "cam"));
        assert!(msg.contains("zero size"), "{msg}");
    }

    #[test]
    fn read_image_file_names_the_path() {
        let dir = std::env::temp_dir().join(format!("vlm3d-image-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let good = dir.join("good.jpg");
        let data = jpeg();
        std::fs::write(&good, &data).unwrap();
        assert_eq!(read_image_file(&good).unwrap().dimensions(), (96, 64));
        let cut = dir.join("cut.jpg");
        std::fs::write(&cut, &data[..1000]).unwrap();
        let msg = err(read_image_file(&cut));
        assert!(
            msg.contains("cut.jpg") && msg.contains("truncated"),
            "{msg}"
        );
        let missing = dir.join("missing.png");
        match read_image_file(&missing) {
            Err(Error::Io { path, .. }) => assert_eq!(path, missing),
            other => panic!("{other:?}"),
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn raw_images_round_trip() {
        // 2×2 with a padded step of 8 bytes.
        let rgb = [1, 2, 3, 4, 5, 6, 0, 0, 7, 8, 9, 10, 11, 12, 0, 0];
        let img = decode_raw(2, 2, "rgb8", 8, &rgb, "cam").unwrap();
        assert_eq!(img.as_raw(), &[1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]);
        let img = decode_raw(2, 2, "bgr8", 8, &rgb, "cam").unwrap();
        assert_eq!(img.as_raw(), &[3, 2, 1, 6, 5, 4, 9, 8, 7, 12, 11, 10]);
        let img = decode_raw(2, 1, "mono8", 2, &[10, 200], "cam").unwrap();
        assert_eq!(img.as_raw(), &[10, 10, 10, 200, 200, 200]);
        let img = decode_raw(1, 1, "rgba8", 4, &[1, 2, 3, 255], "cam").unwrap();
        assert_eq!(img.as_raw(), &[1, 2, 3]);
        let img = decode_raw(1, 1, "bgra8", 4, &[1, 2, 3, 255], "cam").unwrap();
        assert_eq!(img.as_raw(), &[3, 2, 1]);
    }

    #[test]
    fn bad_raw_images_are_errors() {
        let data = [0u8; 12];
        let msg = err(decode_raw(2, 2, "yuv422", 4, &data, "cam_front image"));
        assert!(
            msg.contains("\"yuv422\"") && msg.contains("cam_front image"),
            "{msg}"
        );
        let msg = err(decode_raw(0, 0, "rgb8", 0, &data, "cam"));
        assert!(msg.contains("zero size"), "{msg}");
        let msg = err(decode_raw(2, 0, "rgb8", 6, &data, "cam"));
        assert!(msg.contains("zero size"), "{msg}");
        let msg = err(decode_raw(2, 2, "rgb8", 5, &data, "cam"));
        assert!(msg.contains("step 5"), "{msg}");
        let msg = err(decode_raw(2, 2, "rgb8", 6, &data[..11], "cam"));
        assert!(
            msg.contains("truncated rgb8") && msg.contains("11 bytes"),
            "{msg}"
        );
        let msg = err(decode_raw(
            MAX_SIDE + 1,
            1,
            "mono8",
            MAX_SIDE + 1,
            &data,
            "cam",
        ));
        assert!(msg.contains("larger than"), "{msg}");
    }
}
