/**
 * The allocator setting that keeps RSS from creeping (README "Reliability": glibc's mmap threshold
 * fixed at 128 KiB) is shipped everywhere the server is started, with one value: `npm start`, the
 * Docker image (which the Kubernetes pods run), and the soak benchmark that measures it.
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import t from 'tap';
import { ROOT } from '../helpers.js';

const read = (...p: string[]) => readFileSync(join(ROOT, ...p), 'utf8');

t.test('MALLOC_MMAP_THRESHOLD_ has one value in npm start, the image and the soak', async (t) => {
  const start = (JSON.parse(read('package.json')) as { scripts: Record<string, string> }).scripts.start;
  const fromStart = /^MALLOC_MMAP_THRESHOLD_=\$\{MALLOC_MMAP_THRESHOLD_:-(\d+)\} node /.exec(start)?.[1];
  t.ok(fromStart, `npm start sets it and lets the environment override it: ${start}`);
  const dockerfile = read('docker', 'Dockerfile');
  const runtime = dockerfile.slice(dockerfile.lastIndexOf('\nFROM '));
  const fromImage = /^ENV .*\bMALLOC_MMAP_THRESHOLD_=(\d+)/m.exec(runtime)?.[1];
  t.equal(fromImage, fromStart, 'the runtime image sets the same value');
  const fromSoak = /MALLOC_MMAP_THRESHOLD_: process\.env\.MALLOC_MMAP_THRESHOLD_ \?\? '(\d+)'/.exec(read('bench', 'reliability', 'soak.ts'))?.[1];
  t.equal(fromSoak, fromStart, 'the soak measures what is shipped');
  t.equal(Number(fromStart), 128 * 1024, "glibc's initial threshold: buffers of 128 KiB and up go to mmap and back to the system when freed");
  const deployment = read('deploy', 'kubernetes', 'server-deployment.yaml');
  t.notMatch(deployment, /name: MALLOC_MMAP_THRESHOLD_/, 'the pods inherit the image value rather than a second copy');
});
