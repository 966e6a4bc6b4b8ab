// The hello scenario in JavaScript: one detect step that reports healthy and
// counts its runs in the plugin's state. Built with componentize-js against
// wit/ (world drhost:plugin/scenario@0.2.0); see build.sh.
import { get, set } from 'drhost:plugin/state@0.2.0';

export const plugin = {
  info() {
    return {
      name: 'hello-js',
      version: '0.1.0',
      description: 'A trivial scenario in JavaScript: always healthy',
      components: [
        {
          name: 'nothing',
          kind: 'other',
          priority: 'p3',
          rtoSeconds: 60,
          rpoSeconds: 60,
          description: 'nothing at all',
        },
      ],
      steps: [
        {
          id: 'check',
          phase: 'detect',
          component: 'nothing',
          budgetSeconds: 5,
          mutating: false,
          description: 'count the runs and report healthy',
        },
      ],
    };
  },

  runStep(id, context) {
    const raise = context.find((f) => f.key === 'raise');
    if (raise) {
      // drhost's tests: how an uncaught error is reported.
      throw new TypeError(raise.value);
    }
    const raw = get('runs');
    const runs = raw ? Number(new TextDecoder().decode(raw)) + 1 : 1;
    try {
      set('runs', new TextEncoder().encode(String(runs)));
    } catch (e) {
      return { tag: 'failed', val: `state: ${JSON.stringify(e.payload ?? String(e))}` };
    }
    return { tag: 'ok', val: [{ key: 'runs', value: String(runs) }] };
  },
};
