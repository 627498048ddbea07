/**
 * docker/verify.sh builds docker/Dockerfile with podman and checks the image for real (readiness,
 * a generation, uid 1000, HEALTHCHECK, a hot upload, read-only root filesystem, SIGTERM, size);
 * its checks are TAP, counted here one by one. It takes minutes, so it runs only with
 * DOCKER_VERIFY=1: .ci/run sets it and runs this file after the suite. Where no container can run,
 * the script's plan is a SKIP with the reason.
 */
import { join } from 'node:path';
import t from 'tap';
import { ROOT } from '../helpers.js';

if (process.env.DOCKER_VERIFY === '1') {
  t.spawn('bash', [join(ROOT, 'docker', 'verify.sh')], { timeout: 15 * 60_000 }, 'docker/verify.sh');
} else {
  t.plan(0, 'DOCKER_VERIFY=1 builds and runs the image with podman (docker/verify.sh, a few minutes)');
}
