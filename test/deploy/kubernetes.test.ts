/**
 * deploy/kubernetes: every manifest the kustomization lists parses and validates against the
 * Kubernetes schemas (kubernetes-models; the ServiceMonitor against prometheus-operator's models),
 * and the manifests agree with the server itself rather than with a copy of it: env names are the
 * ones src/config.ts reads and their values pass its validation, the probes and the scrape path
 * answer on the real app, the HPA's metric is one the server exports, the grace period outlasts
 * the shutdown deadline, and the image's user (docker/Dockerfile) is the pods' non-root uid.
 */
import { execFileSync } from 'node:child_process';
import { readdirSync, readFileSync } from 'node:fs';
import { join, posix } from 'node:path';
import { ServiceMonitor } from '@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/ServiceMonitor';
import { Deployment, StatefulSet } from 'kubernetes-models/apps/v1';
import { HorizontalPodAutoscaler } from 'kubernetes-models/autoscaling/v2';
import { PodDisruptionBudget } from 'kubernetes-models/policy/v1';
import { Namespace, Service } from 'kubernetes-models/v1';
import type { IContainer, IEnvVar, IProbe } from 'kubernetes-models/v1';
import t from 'tap';
import { parse, parseAllDocuments } from 'yaml';
import { loadConfig } from '../../src/config.js';
import { ROOT, startServer } from '../helpers.js';

const DIR = join(ROOT, 'deploy', 'kubernetes');
const read = (file: string) => readFileSync(join(DIR, file), 'utf8');

/** One model class per kind: validate() checks an object against that kind's OpenAPI schema. */
const MODELS: Record<string, new (data: never) => { validate(): void }> = {
  'v1/Namespace': Namespace,
  'v1/Service': Service,
  'apps/v1/Deployment': Deployment,
  'apps/v1/StatefulSet': StatefulSet,
  'policy/v1/PodDisruptionBudget': PodDisruptionBudget,
  'autoscaling/v2/HorizontalPodAutoscaler': HorizontalPodAutoscaler,
  'monitoring.coreos.com/v1/ServiceMonitor': ServiceMonitor,
};

type Manifest = { apiVersion: string; kind: string; metadata: { name: string; labels?: Record<string, string> }; spec: any };
const kustomization = parse(read('kustomization.yaml'));
const manifests: (Manifest & { file: string })[] = [];
for (const file of kustomization.resources as string[]) {
  for (const doc of parseAllDocuments(read(file))) {
    if (doc.errors.length) throw new Error(`${file}: ${doc.errors[0].message}`);
    manifests.push({ ...(doc.toJS() as Manifest), file });
  }
}
const find = (kind: string, name?: string) => {
  const m = manifests.find((x) => x.kind === kind && (!name || x.metadata.name === name));
  if (!m) throw new Error(`no ${kind} ${name ?? ''} in deploy/kubernetes`);
  return m;
};
const server = find('Deployment', 'softprompt-server');
const pod = server.spec.template.spec;
const container: IContainer = pod.containers[0];
const env: IEnvVar[] = container.env ?? [];

/** The runtime stage of docker/Dockerfile: its WORKDIR, ENV and USER are what the pods start with. */
function runtimeStage(): { workdir: string; env: Record<string, string>; user: string } {
  const lines = readFileSync(join(ROOT, 'docker', 'Dockerfile'), 'utf8').replace(/\\\n\s*/g, ' ').split('\n');
  let from = 0;
  lines.forEach((l, i) => /^FROM\s/i.test(l) && (from = i));
  const stage = lines.slice(from);
  const out = { workdir: '/', env: {} as Record<string, string>, user: '' };
  for (const line of stage) {
    const [op, ...rest] = line.trim().split(/\s+/);
    if (op === 'WORKDIR') out.workdir = posix.resolve(out.workdir, rest[0]);
    if (op === 'USER') out.user = rest[0];
    if (op === 'ENV') for (const m of rest.join(' ').matchAll(/(\w+)=(\S+)/g)) out.env[m[1]] = m[2];
  }
  return out;
}
const image = runtimeStage();

/** The environment variables src/config.ts reads, found by watching loadConfig read them. */
function configNames(): Set<string> {
  const seen = new Set<string>();
  loadConfig(new Proxy({}, { get: (_t, key) => (typeof key === 'string' && seen.add(key), undefined) }));
  return seen;
}

t.test('the kustomization lists every manifest, and each validates against its schema', async (t) => {
  const yamls = readdirSync(DIR).filter((f) => f.endsWith('.yaml'));
  const extra = ['kustomization.yaml', 'prometheus-adapter-values.yaml']; // not resources: kustomize's own, Helm values
  t.same([...kustomization.resources].sort(), yamls.filter((f) => !extra.includes(f)).sort(), 'no manifest left out of the kustomization');
  for (const m of manifests) {
    const Model = MODELS[`${m.apiVersion}/${m.kind}`];
    if (!Model) {
      t.fail(`${m.file}: no schema model for ${m.apiVersion} ${m.kind}`);
      continue;
    }
    const { file, ...doc } = m;
    t.doesNotThrow(() => new Model(doc as never).validate(), `${file}: ${m.kind} ${m.metadata.name} is valid`);
  }
  // The validator catches what it should: a port as a string, a probe without a handler's port.
  const broken = structuredClone(server) as Manifest & { file?: string };
  delete broken.file;
  broken.spec.template.spec.containers[0].ports[0].containerPort = '8080';
  t.throws(() => new Deployment(broken as never).validate(), 'a malformed Deployment is rejected');
});

t.test('env names are ones src/config.ts reads, and their values pass its validation', async (t) => {
  const names = configNames();
  t.ok(names.has('PORT') && names.has('ADMIN_TOKEN'), 'the config names were observed');
  for (const e of env) t.ok(names.has(e.name), `${e.name} is read by src/config.ts`);
  const values = { ...image.env, ...Object.fromEntries(env.map((e) => [e.name, e.value ?? 'from-a-secret'])) };
  const config = loadConfig(values);
  const http = container.ports!.find((p) => p.name === 'http');
  t.equal(config.port, http?.containerPort, 'the server listens on the container port named http');
  t.equal(config.host, '0.0.0.0', 'reachable from outside the pod');
  const cpu = Number(container.resources?.limits?.cpu);
  t.ok(config.workers * config.intraOpThreads <= cpu, `WORKERS × INTRA_OP_THREADS (${config.workers * config.intraOpThreads}) fit the CPU limit (${cpu})`);
  const cacheMount = container.volumeMounts?.find((v) => v.mountPath === posix.resolve(image.workdir, config.cacheDir));
  t.ok(cacheMount, `the graph cache (${config.cacheDir} in ${image.workdir}) is on a mounted volume`);
  t.ok(pod.volumes.find((v: { name: string; emptyDir?: object }) => v.name === cacheMount?.name)?.emptyDir, 'that volume is an emptyDir');
  const preStop = Number(container.lifecycle?.preStop?.exec?.command?.[1] ?? 0);
  t.ok(pod.terminationGracePeriodSeconds * 1000 > config.shutdownDeadlineMs + preStop * 1000, `the grace period (${pod.terminationGracePeriodSeconds} s) outlasts preStop (${preStop} s) + SHUTDOWN_DEADLINE_MS (${config.shutdownDeadlineMs} ms)`);
  const redis = new URL(config.redisUrl!);
  const redisService = find('Service', redis.hostname);
  t.equal(redisService.spec.ports[0].port, Number(redis.port), 'REDIS_URL names the Redis Service and its port');
  t.equal(find('StatefulSet', 'redis').spec.serviceName, redis.hostname, 'served by the Redis StatefulSet');
});

t.test('tokens come from a Secret that the repository does not hold', async (t) => {
  const generator = (kustomization.secretGenerator as { name: string; envs: string[] }[])[0];
  for (const name of ['ADMIN_TOKEN', 'API_TOKENS']) {
    const ref = env.find((e) => e.name === name)?.valueFrom?.secretKeyRef;
    t.equal(ref?.name, generator.name, `${name} comes from the generated Secret`);
    t.equal(ref?.key, name);
  }
  t.notOk(env.find((e) => e.name === 'ADMIN_TOKEN')?.valueFrom?.secretKeyRef?.optional, 'ADMIN_TOKEN is required: pods do not start without it');
  const tracked = execFileSync('git', ['ls-files', 'deploy'], { cwd: ROOT, encoding: 'utf8' }).split('\n');
  for (const file of generator.envs) {
    t.notOk(tracked.includes(`deploy/kubernetes/${file}`), `${file} is not committed`);
    t.match(read('.gitignore'), new RegExp(`^${file}$`, 'm'), `${file} is ignored by git`);
  }
  t.notMatch(read('tokens.env.example'), /^\s*[A-Z_]+=/m, 'the example sets no token');
  t.same(kustomization.images.map((i: { name: string }) => i.name), [container.image], 'the kustomization sets the server image');
});

t.test('probes, the scrape path and the HPA metric are served by the real app', async (t) => {
  const probes: [string, IProbe | undefined][] = [['startup', container.startupProbe], ['readiness', container.readinessProbe], ['liveness', container.livenessProbe]];
  const portNames = container.ports!.map((p) => p.name);
  const startup = container.startupProbe!;
  t.ok(startup.periodSeconds! * startup.failureThreshold! >= 120, 'the startup probe allows at least 2 minutes for the graph build');
  t.equal(container.readinessProbe?.httpGet?.path, '/readyz');
  t.equal(container.livenessProbe?.httpGet?.path, '/healthz');
  const service = find('Service', 'softprompt-server');
  const monitor = find('ServiceMonitor', 'softprompt-server');
  const hpa = find('HorizontalPodAutoscaler', 'softprompt-server');
  const metric: string = hpa.spec.metrics[0].pods.metric.name;

  const s = await startServer({ WORKERS: '1' });
  t.teardown(() => s.close());
  for (const [kind, probe] of probes) {
    t.ok(portNames.includes(String(probe?.httpGet?.port)), `${kind} probe targets the named port`);
    t.equal((await s.app.inject({ url: probe!.httpGet!.path })).statusCode, 200, `${kind} probe ${probe!.httpGet!.path} answers 200`);
  }
  const scrape = await s.app.inject({ url: monitor.spec.endpoints[0].path });
  t.equal(scrape.statusCode, 200, `the ServiceMonitor's path ${monitor.spec.endpoints[0].path} answers`);
  t.match(scrape.body, new RegExp(`^# TYPE ${metric} gauge$`, 'm'), `the HPA's metric ${metric} is a gauge the server exports`);
  const adapter = parse(read('prometheus-adapter-values.yaml')).rules.custom[0];
  t.equal(adapter.name.as, metric, 'the Prometheus adapter serves it under that name');
  t.match(adapter.seriesQuery, new RegExp(`^${metric}\\{`), 'from that series');

  t.equal(hpa.spec.scaleTargetRef.name, server.metadata.name, 'the HPA scales the server');
  t.ok(hpa.spec.minReplicas >= 2 && server.spec.replicas === hpa.spec.minReplicas, 'two replicas at least');
  const podLabels = server.spec.template.metadata.labels;
  t.has(podLabels, server.spec.selector.matchLabels);
  t.has(podLabels, service.spec.selector, 'the Service selects the pods');
  t.has(podLabels, find('PodDisruptionBudget').spec.selector.matchLabels, 'the PodDisruptionBudget covers the pods');
  t.has(service.metadata.labels, monitor.spec.selector.matchLabels, 'the ServiceMonitor selects the Service');
  t.ok(service.spec.ports.some((p: { name: string; targetPort: string }) => p.name === monitor.spec.endpoints[0].port && portNames.includes(p.targetPort)), 'on its http port');
});

t.test('the image runs as the non-root uid the pods require', async (t) => {
  const [uid, gid] = image.user.split(':').map(Number);
  t.ok(Number.isInteger(uid) && uid > 0, `docker/Dockerfile's USER (${image.user}) is a numeric non-root uid, which runAsNonRoot can verify`);
  const sc = pod.securityContext;
  t.equal(sc.runAsNonRoot, true);
  t.equal(sc.runAsUser, uid, 'the pod runs as the image user');
  t.equal(sc.runAsGroup, gid);
  t.equal(container.securityContext?.readOnlyRootFilesystem, true, 'read-only root filesystem');
  t.equal(container.securityContext?.allowPrivilegeEscalation, false);
  t.same(container.securityContext?.capabilities?.drop, ['ALL']);
});
