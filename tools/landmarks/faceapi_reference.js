// Reference outputs of the original face-api implementation for aue-landmarks' parity tests.
//
// Runs @vladmandic/face-api 1.7.15 on TensorFlow.js 4.22's plain CPU backend (float32 JavaScript
// kernels, no native code) over PNG images and writes, per image:
//   - the tiny face detector's faces (inputSize 416, scoreThreshold 0.5): box x, y, width, height in
//     image pixels and score;
//   - the SSD MobileNet v1 detector's faces (minConfidence 0.5), the same way (`ssd_faces`);
//   - for each landmark net (face_landmark_68, face_landmark_68_tiny) and each face crop (the first
//     detection, and any fixed boxes given with --box), the 68 points in the crop's pixel frame
//     (face-api's `unshiftedLandmarks`), with the crop face-api actually cut (box clipped to the image
//     and floored).
// Only PNG is read, so both sides see the same pixels (JPEG decoders differ).
//
// Usage (from this folder):
//   npm ci
//   node faceapi_reference.js --out ../../crates/landmarks/tests/fixtures/astronaut_face.faceapi.json \
//     --box 40,20,80,90 ../../crates/landmarks/tests/fixtures/astronaut_face.png
'use strict';

const fs = require('fs');
const path = require('path');
const { PNG } = require('pngjs');
const tf = require('@tensorflow/tfjs');
const faceapi = require('@vladmandic/face-api/dist/face-api.node-wasm.js');

const MODEL_DIR = path.join(path.dirname(require.resolve('@vladmandic/face-api/package.json')), 'model');
const INPUT_SIZE = 416;
const SCORE_THRESHOLD = 0.5;
const SSD_MIN_CONFIDENCE = 0.5;

function parseArgs(argv) {
  const args = { out: null, boxes: [], images: [] };
  for (let i = 0; i < argv.length; i += 1) {
    if (argv[i] === '--out') {
      args.out = argv[i + 1];
      i += 1;
    } else if (argv[i] === '--box') {
      const v = argv[i + 1].split(',').map(Number);
      if (v.length !== 4 || v.some(Number.isNaN)) throw new Error(`--box wants x,y,width,height, got ${argv[i + 1]}`);
      args.boxes.push(v);
      i += 1;
    } else {
      args.images.push(argv[i]);
    }
  }
  if (!args.out || args.images.length === 0) throw new Error('usage: faceapi_reference.js --out FILE.json [--box x,y,w,h]... IMAGE.png...');
  return args;
}

function readPng(file) {
  const png = PNG.sync.read(fs.readFileSync(file));
  const rgb = new Int32Array(png.width * png.height * 3);
  for (let i = 0; i < png.width * png.height; i += 1) {
    rgb[3 * i] = png.data[4 * i];
    rgb[3 * i + 1] = png.data[4 * i + 1];
    rgb[3 * i + 2] = png.data[4 * i + 2];
  }
  return tf.tensor3d(rgb, [png.height, png.width, 3], 'int32');
}

async function landmarksFor(net, image, box) {
  // Same crop as face-api's extractFaceTensors: clip at the image borders, then floor.
  const [crop] = await faceapi.extractFaceTensors(image, [new faceapi.Rect(box[0], box[1], box[2], box[3])]);
  const lm = await net.detectLandmarks(crop);
  const cropShape = crop.shape;
  crop.dispose();
  const clipped = new faceapi.Rect(box[0], box[1], box[2], box[3]).clipAtImageBorders(image.shape[1], image.shape[0]);
  return {
    box,
    crop: [clipped.x, clipped.y, cropShape[1], cropShape[0]],
    points: lm.positions.map((p) => [p.x, p.y]),
  };
}

async function main() {
  const args = parseArgs(process.argv.slice(2));
  await tf.setBackend('cpu');
  await tf.ready();
  await faceapi.nets.tinyFaceDetector.loadFromDisk(MODEL_DIR);
  await faceapi.nets.ssdMobilenetv1.loadFromDisk(MODEL_DIR);
  await faceapi.nets.faceLandmark68Net.loadFromDisk(MODEL_DIR);
  await faceapi.nets.faceLandmark68TinyNet.loadFromDisk(MODEL_DIR);
  const nets = { face_landmark_68: faceapi.nets.faceLandmark68Net, face_landmark_68_tiny: faceapi.nets.faceLandmark68TinyNet };
  const options = new faceapi.TinyFaceDetectorOptions({ inputSize: INPUT_SIZE, scoreThreshold: SCORE_THRESHOLD });

  const results = [];
  for (const file of args.images) {
    const image = readPng(file);
    const detections = await faceapi.detectAllFaces(image, options);
    const faces = detections.map((d) => ({ box: [d.box.x, d.box.y, d.box.width, d.box.height], score: d.score }));
    const ssd = await faceapi.detectAllFaces(image, new faceapi.SsdMobilenetv1Options({ minConfidence: SSD_MIN_CONFIDENCE }));
    const ssdFaces = ssd.map((d) => ({ box: [d.box.x, d.box.y, d.box.width, d.box.height], score: d.score }));
    const boxes = faces.length > 0 ? [faces[0].box, ...args.boxes] : [...args.boxes];
    const landmarks = {};
    for (const [name, net] of Object.entries(nets)) {
      landmarks[name] = [];
      for (const box of boxes) landmarks[name].push(await landmarksFor(net, image, box));
    }
    results.push({ image: path.basename(file), width: image.shape[1], height: image.shape[0], faces, ssd_faces: ssdFaces, landmarks });
    image.dispose();
  }
  const doc = {
    generator: 'tools/landmarks/faceapi_reference.js',
    face_api: faceapi.version,
    tfjs: tf.version_core,
    backend: tf.getBackend(),
    detector: { input_size: INPUT_SIZE, score_threshold: SCORE_THRESHOLD },
    ssd: { min_confidence: SSD_MIN_CONFIDENCE },
    results,
  };
  // One line per point list keeps the fixture readable and diffable.
  const text = JSON.stringify(doc, null, 1).replace(/\[\s+(-?[\d.e+-]+),\s+(-?[\d.e+-]+)\s+\]/g, '[$1, $2]');
  fs.writeFileSync(args.out, `${text}\n`);
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
