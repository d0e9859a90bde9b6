//! Printing an indicium: one DataMatrix (ECC 200, square) holding the exact
//! indicium bytes, with the human-readable lines beside it inside a frame, as
//! on a real meter imprint, the amount large; as PNG (grayscale, 203 dpi —
//! 8 dots/mm, a thermal label printer's resolution — recorded in its pHYs
//! chunk; text in the Hack typeface rasterized by `ab_glyph`) or SVG.
//!
//! The symbol is encoded in Base256 by the encoder's own choice for binary
//! data, so a scanner (`dmtxread`) gives back the bytes unchanged.

use ab_glyph::{Font, FontRef, PxScale, ScaleFont};
use datamatrix::{DataMatrix, SymbolList};
use meter_pki::indicium::IndiciumBody;

use crate::error::CtlError;
use crate::output::{format_amount, format_unix_time};

/// Image pixels per symbol module (PNG).
pub const MODULE_PX: usize = 4;
/// Quiet zone around the symbol, in modules (the standard asks for one).
pub const QUIET: usize = 2;
/// Text height of the PNG's lines, and of its first line (the amount), in pixels.
const TEXT_PX: f32 = 20.0;
const AMOUNT_PX: f32 = 34.0;
/// Pixels per metre of the PNG: 8 dots/mm (203 dpi), so one 4-pixel module
/// prints 0.5 mm wide.
pub const PX_PER_METRE: u32 = 8_000;
/// Margin between the frame and the content, in pixels; the frame's width.
const MARGIN: usize = 3 * MODULE_PX;
const FRAME: usize = 2;

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

/// The imprint's typeface: Hack (MIT and Bitstream Vera licences), as the
/// `epaint_default_fonts` crate ships it.
fn face() -> Result<FontRef<'static>, CtlError> {
    FontRef::try_from_slice(epaint_default_fonts::HACK_REGULAR)
        .map_err(|e| CtlError::Reply(format!("the built-in typeface does not load: {e}")))
}

/// One line's scale: the first (the amount) large, the rest plain.
fn line_scale(n: usize) -> PxScale {
    PxScale::from(if n == 0 { AMOUNT_PX } else { TEXT_PX })
}

fn text_width(font: &FontRef<'_>, scale: PxScale, text: &str) -> f32 {
    let f = font.as_scaled(scale);
    text.chars().map(|c| f.h_advance(f.glyph_id(c))).sum()
}

/// A grayscale canvas, white, drawn on in black.
struct Canvas {
    px: Vec<u8>,
    width: usize,
}

impl Canvas {
    fn fill(&mut self, x: usize, y: usize, w: usize, h: usize) {
        fill(&mut self.px, self.width, x, y, w, h);
    }

    /// `text` with its baseline at `y`, anti-aliased (the darker of canvas and glyph).
    fn text(&mut self, font: &FontRef<'_>, scale: PxScale, x: f32, y: f32, text: &str) {
        let scaled = font.as_scaled(scale);
        let mut caret = x;
        for c in text.chars() {
            let id = scaled.glyph_id(c);
            let glyph = id.with_scale_and_position(scale, ab_glyph::point(caret, y));
            caret += scaled.h_advance(id);
            let Some(outline) = font.outline_glyph(glyph) else {
                continue;
            };
            let b = outline.px_bounds();
            let (x0, y0) = (b.min.x.max(0.0) as usize, b.min.y.max(0.0) as usize);
            let width = self.width;
            outline.draw(|gx, gy, coverage| {
                let i = (y0 + gy as usize) * width + x0 + gx as usize;
                if let Some(p) = self.px.get_mut(i) {
                    let ink = 255 - (coverage.clamp(0.0, 1.0) * 255.0) as u8;
                    *p = (*p).min(ink);
                }
            });
        }
    }
}

/// The imprint as 8-bit grayscale pixels (row-major, 0 = black), drawn for
/// 203 dpi: the one drawing that the PNG and the PDF label both carry.
#[derive(Debug, Clone)]
pub struct Raster {
    /// Pixels per row.
    pub width: usize,
    /// Rows.
    pub height: usize,
    /// `width * height` gray levels.
    pub px: Vec<u8>,
}

/// Renders the symbol with `lines` to its right inside a frame, the first
/// line (the amount) large, as a grayscale PNG at 203 dpi.
pub fn png(sym: &Symbol, lines: &[String]) -> Result<Vec<u8>, CtlError> {
    let r = raster(sym, lines)?;
    let mut out = Vec::new();
    {
        let w = u32::try_from(r.width).map_err(|_| CtlError::Usage("image too wide".into()))?;
        let h = u32::try_from(r.height).map_err(|_| CtlError::Usage("image too tall".into()))?;
        let mut enc = png::Encoder::new(&mut out, w, h);
        enc.set_color(png::ColorType::Grayscale);
        enc.set_depth(png::BitDepth::Eight);
        enc.set_pixel_dims(Some(png::PixelDimensions {
            xppu: PX_PER_METRE,
            yppu: PX_PER_METRE,
            unit: png::Unit::Meter,
        }));
        let io = |e: png::EncodingError| CtlError::Io {
            what: "cannot encode the PNG",
            source: std::io::Error::other(e.to_string()),
        };
        let mut writer = enc.write_header().map_err(io)?;
        writer.write_image_data(&r.px).map_err(io)?;
    }
    Ok(out)
}

/// Draws the imprint: the symbol with `lines` to its right inside a frame.
pub fn raster(sym: &Symbol, lines: &[String]) -> Result<Raster, CtlError> {
    let font = face()?;
    let sym_px = (sym.side + 2 * QUIET) * MODULE_PX;
    let heights: Vec<f32> = (0..lines.len())
        .map(|n| font.as_scaled(line_scale(n)).height() * 1.15)
        .collect();
    let text_w = lines
        .iter()
        .enumerate()
        .map(|(n, l)| text_width(&font, line_scale(n), l).ceil() as usize)
        .max()
        .unwrap_or(0);
    let text_h = heights.iter().sum::<f32>().ceil() as usize;
    let text_x = MARGIN + sym_px + 2 * MODULE_PX;
    let width = text_x + text_w + MARGIN;
    let height = 2 * MARGIN + sym_px.max(text_h + 2 * QUIET * MODULE_PX);
    let mut c = Canvas {
        px: vec![255u8; width * height],
        width,
    };
    // The frame, outside the symbol's quiet zone.
    c.fill(0, 0, width, FRAME);
    c.fill(0, height - FRAME, width, FRAME);
    c.fill(0, 0, FRAME, height);
    c.fill(width - FRAME, 0, FRAME, height);
    for (i, _) in sym.dark.iter().enumerate().filter(|(_, d)| **d) {
        let (mx, my) = (i % sym.side + QUIET, i / sym.side + QUIET);
        c.fill(
            MARGIN + mx * MODULE_PX,
            MARGIN + my * MODULE_PX,
            MODULE_PX,
            MODULE_PX,
        );
    }
    let mut y = (MARGIN + QUIET * MODULE_PX) as f32;
    for (n, line) in lines.iter().enumerate() {
        let scaled = font.as_scaled(line_scale(n));
        c.text(
            &font,
            line_scale(n),
            text_x as f32,
            y + scaled.ascent(),
            line,
        );
        y += heights[n];
    }
    Ok(Raster {
        width,
        height,
        px: c.px,
    })
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
    let first = lines.first().map_or(0, |l| l.chars().count() * 2);
    let width = side + 4 + longest.max(first) * 6 / 5 + 4;
    let height = side.max(lines.len() * 3 + 3 + 2 * QUIET);
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
    // The frame, and the first line (the amount) twice as large.
    s.push_str(&format!(
        "<rect x=\"0.25\" y=\"0.25\" width=\"{}\" height=\"{}\" fill=\"none\" stroke=\"#000\" stroke-width=\"0.5\"/>\n",
        width as f32 - 0.5,
        height as f32 - 0.5
    ));
    for (n, line) in lines.iter().enumerate() {
        let (y, size) = if n == 0 {
            (QUIET + 3, 4)
        } else {
            (QUIET + 3 + n * 3, 2)
        };
        s.push_str(&format!(
            "<text x=\"{}\" y=\"{y}\" font-family=\"Hack, DejaVu Sans Mono, monospace\" font-size=\"{size}\">{}</text>\n",
            side + 4,
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
        // The print resolution travels with the image: pHYs, 8,000 px/m both ways, in metres.
        let at = png
            .windows(4)
            .position(|w| w == b"pHYs")
            .expect("a pHYs chunk");
        assert_eq!(
            &png[at + 4..at + 13],
            &[0, 0, 0x1f, 0x40, 0, 0, 0x1f, 0x40, 1]
        );
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
