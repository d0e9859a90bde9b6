//! Printing an indicium: one DataMatrix (ECC 200, square) holding the exact
//! indicium bytes, with the human-readable lines beside it as on a real
//! meter imprint; as PNG (grayscale, text in a built-in 5×7 bitmap font, so
//! no font crate) or SVG (`<text>`).
//!
//! The symbol is encoded in Base256 by the encoder's own choice for binary
//! data, so a scanner (`dmtxread`) gives back the bytes unchanged.

use datamatrix::{DataMatrix, SymbolList};
use meter_pki::indicium::IndiciumBody;

use crate::error::CtlError;
use crate::output::{format_amount, format_unix_time};

/// Image pixels per symbol module (PNG).
pub const MODULE_PX: usize = 4;
/// Quiet zone around the symbol, in modules (the standard asks for one).
pub const QUIET: usize = 2;
/// Scale of the 5×7 font (PNG): each font dot is this many pixels.
pub const FONT_SCALE: usize = 2;

/// An encoded symbol: its modules (row-major, `true` = dark) and side.
#[derive(Debug, Clone)]
pub struct Symbol {
    /// Modules per side (e.g. 44).
    pub side: usize,
    /// Row-major modules.
    pub dark: Vec<bool>,
}

/// Encodes `data` as the smallest square DataMatrix that holds it.
pub fn symbol(data: &[u8]) -> Result<Symbol, CtlError> {
    let code = DataMatrix::encode(data, SymbolList::default().enforce_square())
        .map_err(|e| CtlError::Usage(format!("indicium does not fit a DataMatrix: {e:?}")))?;
    let bitmap = code.bitmap();
    Ok(Symbol {
        side: bitmap.width(),
        dark: bitmap.bits().to_vec(),
    })
}

/// Renders the symbol with `lines` to its right, as a grayscale PNG.
pub fn png(sym: &Symbol, lines: &[String]) -> Result<Vec<u8>, CtlError> {
    let sym_px = (sym.side + 2 * QUIET) * MODULE_PX;
    let glyph_w = 6 * FONT_SCALE;
    let line_h = 10 * FONT_SCALE;
    let longest = lines.iter().map(|l| l.chars().count()).max().unwrap_or(0);
    let text_x = sym_px + 4 * MODULE_PX;
    let width = text_x + longest * glyph_w + 4 * MODULE_PX;
    let height = sym_px.max(lines.len() * line_h + 2 * QUIET * MODULE_PX);
    let mut img = vec![255u8; width * height];
    for (i, _) in sym.dark.iter().enumerate().filter(|(_, d)| **d) {
        let (mx, my) = (i % sym.side + QUIET, i / sym.side + QUIET);
        fill(
            &mut img,
            width,
            mx * MODULE_PX,
            my * MODULE_PX,
            MODULE_PX,
            MODULE_PX,
        );
    }
    for (n, line) in lines.iter().enumerate() {
        let y0 = QUIET * MODULE_PX + n * line_h;
        for (k, ch) in line.chars().enumerate() {
            let cols = glyph(ch);
            for (cx, col) in cols.iter().enumerate() {
                for cy in 0..7 {
                    if col >> cy & 1 == 1 {
                        let x = text_x + k * glyph_w + cx * FONT_SCALE;
                        fill(
                            &mut img,
                            width,
                            x,
                            y0 + cy * FONT_SCALE,
                            FONT_SCALE,
                            FONT_SCALE,
                        );
                    }
                }
            }
        }
    }
    let mut out = Vec::new();
    {
        let w = u32::try_from(width).map_err(|_| CtlError::Usage("image too wide".into()))?;
        let h = u32::try_from(height).map_err(|_| CtlError::Usage("image too tall".into()))?;
        let mut enc = png::Encoder::new(&mut out, w, h);
        enc.set_color(png::ColorType::Grayscale);
        enc.set_depth(png::BitDepth::Eight);
        let io = |e: png::EncodingError| CtlError::Io {
            what: "cannot encode the PNG",
            source: std::io::Error::other(e.to_string()),
        };
        let mut writer = enc.write_header().map_err(io)?;
        writer.write_image_data(&img).map_err(io)?;
    }
    Ok(out)
}

fn fill(img: &mut [u8], width: usize, x: usize, y: usize, w: usize, h: usize) {
    for yy in y..y + h {
        for xx in x..x + w {
            if let Some(p) = img.get_mut(yy * width + xx) {
                *p = 0;
            }
        }
    }
}

/// Renders the symbol with `lines` to its right, as SVG (one unit = one module).
pub fn svg(sym: &Symbol, lines: &[String]) -> String {
    let side = sym.side + 2 * QUIET;
    let longest = lines.iter().map(|l| l.chars().count()).max().unwrap_or(0);
    // Monospace text 2 modules high is about 1.2 modules per character.
    let width = side + 4 + longest * 6 / 5 + 4;
    let height = side.max(lines.len() * 3 + 2 * QUIET);
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" viewBox=\"0 0 {width} {height}\" width=\"{}\" height=\"{}\" shape-rendering=\"crispEdges\">\n<rect width=\"{width}\" height=\"{height}\" fill=\"#fff\"/>\n<path fill=\"#000\" d=\"",
        width * MODULE_PX,
        height * MODULE_PX
    );
    // One horizontal run of dark modules per path segment.
    for y in 0..sym.side {
        let mut x = 0;
        while x < sym.side {
            if sym.dark.get(y * sym.side + x).copied().unwrap_or(false) {
                let start = x;
                while x < sym.side && sym.dark.get(y * sym.side + x).copied().unwrap_or(false) {
                    x += 1;
                }
                s.push_str(&format!(
                    "M{} {}h{}v1h-{}z",
                    start + QUIET,
                    y + QUIET,
                    x - start,
                    x - start
                ));
            } else {
                x += 1;
            }
        }
    }
    s.push_str("\"/>\n");
    for (n, line) in lines.iter().enumerate() {
        s.push_str(&format!(
            "<text x=\"{}\" y=\"{}\" font-family=\"monospace\" font-size=\"2\">{}</text>\n",
            side + 4,
            QUIET + 2 + n * 3,
            xml_escape(line)
        ));
    }
    s.push_str("</svg>\n");
    s
}

/// Text for the SVG: quick-xml's escaping of `<`, `>`, `&`, `'` and `"`.
fn xml_escape(t: &str) -> String {
    quick_xml::escape::escape(t).into_owned()
}

/// The human-readable lines printed beside the symbol.
pub fn human_lines(b: &IndiciumBody) -> Vec<String> {
    vec![
        format!("POSTAGE {}", format_amount(b.amount, b.digits, &b.currency)),
        format!(
            "{} {} {} G",
            format_unix_time(i64::from(b.date)),
            b.class,
            b.grams
        ),
        format!("FROM {} TO {}", b.origin, b.destination),
        format!("METER {} PIECE {}", b.meter_id, b.pieces),
        format!(
            "AR {} DR {}",
            format_amount(b.ascending, b.digits, ""),
            format_amount(b.descending, b.digits, "")
        ),
        format!("RATES V{} ROW {}", b.rates_version, b.seq),
    ]
}

/// The fields as JSON (amounts in minor units).
pub fn indicium_json(b: &IndiciumBody) -> serde_json::Value {
    serde_json::json!({
        "meter_id": b.meter_id,
        "date": b.date,
        "date_utc": format_unix_time(i64::from(b.date)),
        "seq": b.seq,
        "amount": b.amount,
        "ascending": b.ascending,
        "descending": b.descending,
        "pieces": b.pieces,
        "rates_version": b.rates_version,
        "currency": b.currency,
        "digits": b.digits,
        "class": b.class,
        "grams": b.grams,
        "origin": b.origin,
        "destination": b.destination,
    })
}

/// Columns of a 5×7 glyph (bit 0 = top row); lowercase prints as uppercase,
/// unknown characters as a box.
fn glyph(c: char) -> [u8; 5] {
    match c.to_ascii_uppercase() {
        ' ' => [0, 0, 0, 0, 0],
        '0' => [0x3E, 0x51, 0x49, 0x45, 0x3E],
        '1' => [0x00, 0x42, 0x7F, 0x40, 0x00],
        '2' => [0x42, 0x61, 0x51, 0x49, 0x46],
        '3' => [0x21, 0x41, 0x45, 0x4B, 0x31],
        '4' => [0x18, 0x14, 0x12, 0x7F, 0x10],
        '5' => [0x27, 0x45, 0x45, 0x45, 0x39],
        '6' => [0x3C, 0x4A, 0x49, 0x49, 0x30],
        '7' => [0x01, 0x71, 0x09, 0x05, 0x03],
        '8' => [0x36, 0x49, 0x49, 0x49, 0x36],
        '9' => [0x06, 0x49, 0x49, 0x29, 0x1E],
        'A' => [0x7E, 0x11, 0x11, 0x11, 0x7E],
        'B' => [0x7F, 0x49, 0x49, 0x49, 0x36],
        'C' => [0x3E, 0x41, 0x41, 0x41, 0x22],
        'D' => [0x7F, 0x41, 0x41, 0x22, 0x1C],
        'E' => [0x7F, 0x49, 0x49, 0x49, 0x41],
        'F' => [0x7F, 0x09, 0x09, 0x01, 0x01],
        'G' => [0x3E, 0x41, 0x41, 0x51, 0x32],
        'H' => [0x7F, 0x08, 0x08, 0x08, 0x7F],
        'I' => [0x00, 0x41, 0x7F, 0x41, 0x00],
        'J' => [0x20, 0x40, 0x41, 0x3F, 0x01],
        'K' => [0x7F, 0x08, 0x14, 0x22, 0x41],
        'L' => [0x7F, 0x40, 0x40, 0x40, 0x40],
        'M' => [0x7F, 0x02, 0x04, 0x02, 0x7F],
        'N' => [0x7F, 0x04, 0x08, 0x10, 0x7F],
        'O' => [0x3E, 0x41, 0x41, 0x41, 0x3E],
        'P' => [0x7F, 0x09, 0x09, 0x09, 0x06],
        'Q' => [0x3E, 0x41, 0x51, 0x21, 0x5E],
        'R' => [0x7F, 0x09, 0x19, 0x29, 0x46],
        'S' => [0x46, 0x49, 0x49, 0x49, 0x31],
        'T' => [0x01, 0x01, 0x7F, 0x01, 0x01],
        'U' => [0x3F, 0x40, 0x40, 0x40, 0x3F],
        'V' => [0x1F, 0x20, 0x40, 0x20, 0x1F],
        'W' => [0x7F, 0x20, 0x18, 0x20, 0x7F],
        'X' => [0x63, 0x14, 0x08, 0x14, 0x63],
        'Y' => [0x03, 0x04, 0x78, 0x04, 0x03],
        'Z' => [0x61, 0x51, 0x49, 0x45, 0x43],
        ':' => [0x00, 0x36, 0x36, 0x00, 0x00],
        '-' => [0x08, 0x08, 0x08, 0x08, 0x08],
        '.' => [0x00, 0x60, 0x60, 0x00, 0x00],
        ',' => [0x00, 0x50, 0x30, 0x00, 0x00],
        '/' => [0x20, 0x10, 0x08, 0x04, 0x02],
        '(' => [0x00, 0x1C, 0x22, 0x41, 0x00],
        ')' => [0x00, 0x41, 0x22, 0x1C, 0x00],
        '+' => [0x08, 0x08, 0x3E, 0x08, 0x08],
        '=' => [0x14, 0x14, 0x14, 0x14, 0x14],
        '#' => [0x14, 0x7F, 0x14, 0x7F, 0x14],
        _ => [0x7F, 0x41, 0x41, 0x41, 0x7F],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn symbol_round_trips_through_the_decoder() {
        let data: Vec<u8> = (0..=255u8).cycle().take(221).collect();
        let sym = symbol(&data).unwrap();
        assert_eq!(sym.dark.len(), sym.side * sym.side);
        assert_eq!(DataMatrix::decode(&sym.dark, sym.side).unwrap(), data);
        let png = png(&sym, &["POSTAGE USD 0.730".into()]).unwrap();
        assert_eq!(&png[1..4], b"PNG");
        let svg = svg(&sym, &["a<b".into()]);
        assert!(svg.contains("a&lt;b"));
    }

    /// The SVG's path draws exactly the symbol's modules: rebuilt from the
    /// path and decoded, it gives the data back.
    #[test]
    fn svg_path_decodes_to_the_data() {
        let data: Vec<u8> = (0..221u32).map(|i| (i * 91 % 256) as u8).collect();
        let sym = symbol(&data).unwrap();
        let text = svg(&sym, &["X".into()]);
        let d = text
            .split("d=\"")
            .nth(1)
            .unwrap()
            .split('"')
            .next()
            .unwrap();
        let mut dark = vec![false; sym.side * sym.side];
        for seg in d.split('z').filter(|s| !s.is_empty()) {
            let seg = seg.strip_prefix('M').unwrap();
            let (xy, rest) = seg.split_once('h').unwrap();
            let (x, y) = xy.split_once(' ').unwrap();
            let w: usize = rest.split_once('v').unwrap().0.parse().unwrap();
            let (x, y): (usize, usize) = (x.parse().unwrap(), y.parse().unwrap());
            for k in 0..w {
                dark[(y - QUIET) * sym.side + x - QUIET + k] = true;
            }
        }
        assert_eq!(DataMatrix::decode(&dark, sym.side).unwrap(), data);
    }

    /// The printed PNG, text beside the symbol, reads back with the stock
    /// `dmtxread` (libdmtx) to exactly the same bytes, NULs and 0xFF included.
    #[test]
    fn dmtxread_reads_the_png_back_exactly() {
        let data: Vec<u8> = (0..221u32).map(|i| (i * 37 % 256) as u8).collect();
        let sym = symbol(&data).unwrap();
        let lines = vec![
            "POSTAGE 0.730 USD".to_string(),
            "FROM 10115 TO SW1A 1AA".into(),
        ];
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("i.png");
        std::fs::write(&path, png(&sym, &lines).unwrap()).unwrap();
        let out = std::process::Command::new("dmtxread")
            .args(["-N1", "-s", "s"])
            .arg(&path)
            .output()
            .expect("dmtxread (dmtx-utils) must be installed");
        assert!(out.status.success(), "{out:?}");
        assert_eq!(out.stdout, data);
    }
}
