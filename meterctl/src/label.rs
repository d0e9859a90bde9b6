//! The imprint on a label: a one-page PDF the size of a common thermal
//! shipping label (4 × 2 in), holding the imprint drawn for 203 dpi at its
//! physical size, so a label printer of that resolution prints one image
//! pixel per dot and the DataMatrix modules stay 0.5 mm.
//!
//! Why a raster and not vector text: the PNG and the label carry the very same
//! drawing (the Hack typeface rasterized by `ab_glyph`), so what was checked
//! on one (that `dmtxread` gives back the exact bytes) holds for the other,
//! and the PDF needs no embedded font. The image is one gray 8-bit XObject,
//! Flate-compressed; an imprint larger than the label grows the page rather
//! than being scaled, since a scaled symbol may no longer scan.

use miniz_oxide::deflate::compress_to_vec_zlib;
use pdf_writer::{Content, Filter, Finish, Name, Pdf, Rect, Ref, TextStr};

use crate::error::CtlError;
use crate::render::{Raster, PX_PER_METRE};

/// Label size in PDF points (1/72 in): 4 × 2 in.
pub const LABEL_PT: (f32, f32) = (288.0, 144.0);
/// Margin kept around the imprint when it fills the label, in points (1/8 in).
const MARGIN_PT: f32 = 9.0;

/// Points per image pixel: 72 pt/in ÷ (8 000 px/m × 0.0254 m/in).
fn pt_per_px() -> f32 {
    72.0 / (PX_PER_METRE as f32 * 0.0254)
}

/// The page size for an imprint of `w` × `h` pixels: the label, or larger.
pub fn page_size(w: usize, h: usize) -> (f32, f32) {
    let (iw, ih) = (w as f32 * pt_per_px(), h as f32 * pt_per_px());
    (
        LABEL_PT.0.max(iw + 2.0 * MARGIN_PT),
        LABEL_PT.1.max(ih + 2.0 * MARGIN_PT),
    )
}

/// The label PDF of one imprint, `title` in its document information.
pub fn pdf(r: &Raster, title: &str) -> Result<Vec<u8>, CtlError> {
    let w = i32::try_from(r.width).map_err(|_| CtlError::Usage("image too wide".into()))?;
    let h = i32::try_from(r.height).map_err(|_| CtlError::Usage("image too tall".into()))?;
    let (catalog, tree, page, image, content, info) = (
        Ref::new(1),
        Ref::new(2),
        Ref::new(3),
        Ref::new(4),
        Ref::new(5),
        Ref::new(6),
    );
    let name = Name(b"Im1");
    let (pw, ph) = page_size(r.width, r.height);
    let (iw, ih) = (r.width as f32 * pt_per_px(), r.height as f32 * pt_per_px());

    let mut doc = Pdf::new();
    doc.catalog(catalog).pages(tree);
    doc.pages(tree).kids([page]).count(1);
    let mut p = doc.page(page);
    p.media_box(Rect::new(0.0, 0.0, pw, ph));
    p.parent(tree);
    p.contents(content);
    p.resources().x_objects().pair(name, image);
    p.finish();

    let packed = compress_to_vec_zlib(&r.px, 9);
    let mut x = doc.image_xobject(image, &packed);
    x.filter(Filter::FlateDecode);
    x.width(w);
    x.height(h);
    x.color_space().device_gray();
    x.bits_per_component(8);
    x.interpolate(false);
    x.finish();

    // Centred, at its physical size.
    let mut c = Content::new();
    c.save_state();
    c.transform([iw, 0.0, 0.0, ih, (pw - iw) / 2.0, (ph - ih) / 2.0]);
    c.x_object(name);
    c.restore_state();
    doc.stream(content, &c.finish());
    doc.document_info(info)
        .title(TextStr(title))
        .producer(TextStr("meterctl"));
    Ok(doc.finish())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_small_imprint_gets_the_label_and_a_large_one_a_larger_page() {
        // 203 dpi: 812 × 406 px is exactly 4 × 2 in.
        assert_eq!(page_size(100, 100), LABEL_PT);
        let (w, h) = page_size(1000, 100);
        assert!((w - (1000.0 * pt_per_px() + 18.0)).abs() < 0.01 && h == LABEL_PT.1);
        assert!((pt_per_px() * 812.0 - 288.0).abs() < 0.5);
    }

    #[test]
    fn the_pdf_holds_one_gray_image_of_the_raster_size() {
        let r = Raster {
            width: 3,
            height: 2,
            px: vec![0, 255, 0, 255, 0, 255],
        };
        let out = pdf(&r, "t").unwrap();
        let text = String::from_utf8_lossy(&out);
        assert!(out.starts_with(b"%PDF-"));
        assert!(text.contains("/Width 3") && text.contains("/Height 2"));
        assert!(text.contains("/DeviceGray") && text.contains("/FlateDecode"));
        assert!(text.contains("/MediaBox [0 0 288 144]"), "{text}");
    }
}
