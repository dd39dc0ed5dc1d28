/**
 * The playground page assembly (no browser): the served HTML is self-contained (style and script inlined, no
 * external URL), the CSP allows exactly the inlined script and style by hash, and broken page sources fail loudly.
 */

import { createHash } from 'node:crypto';

import { describe, expect, it } from 'vitest';

import { inlinePlayground, loadPlaygroundPage } from '../src/server/playground/page.js';
import { playgroundRoute } from '../src/server/routes/playground.js';

const sha256 = (text: string) => `'sha256-${createHash('sha256').update(text, 'utf8').digest('base64')}'`;

describe('playground page', () => {
  it('GET / serves one self-contained HTML page whose CSP names the hashes of its inline script and style', async () => {
    const res = await playgroundRoute().request('/');
    expect(res.status).toBe(200);
    expect(res.headers.get('content-type')).toBe('text/html; charset=utf-8');
    expect(res.headers.get('x-content-type-options')).toBe('nosniff');
    const html = await res.text();
    const csp = res.headers.get('content-security-policy') ?? '';

    const scripts = [...html.matchAll(/<script>([\s\S]*?)<\/script>/g)].map((m) => m[1]!);
    const styles = [...html.matchAll(/<style>([\s\S]*?)<\/style>/g)].map((m) => m[1]!);
    expect(scripts).toHaveLength(1);
    expect(styles).toHaveLength(1);
    expect(csp).toContain(`script-src ${sha256(scripts[0]!)}`);
    expect(csp).toContain(`style-src ${sha256(styles[0]!)}`);
    expect(csp).toContain("default-src 'none'");
    expect(csp).toContain("connect-src 'self'");
    expect(csp).not.toContain('unsafe');

    // Nothing is loaded from elsewhere: no src/href to another origin, no external script or stylesheet.
    expect(html).not.toMatch(/<script[^>]*\ssrc=/);
    expect(html).not.toMatch(/<link[^>]*rel="stylesheet"/);
    expect(html).not.toMatch(/(src|href)="(https?:)?\/\//);
    for (const id of ['messages', 'prompt', 'send', 'stop', 'model-name', 'api-key', 'temperature', 'max-tokens']) {
      expect(html).toContain(`id="${id}"`);
    }
  });

  it('loads the same page from its sources each time (stable hashes)', () => {
    expect(loadPlaygroundPage()).toEqual(loadPlaygroundPage());
  });

  it('refuses page sources it cannot inline safely', () => {
    const html = '<head><link rel="stylesheet" href="style.css"></head><body><script src="app.js"></script></body>';
    expect(inlinePlayground(html, 'body{}', 'x()').html).toBe('<head><style>body{}</style></head><body><script>x()</script></body>');
    expect(() => inlinePlayground('<body></body>', '', '')).toThrow(/exactly once/);
    expect(() => inlinePlayground(html, '', 'a("</script>")')).toThrow(/must not contain/);
    expect(() => inlinePlayground(html, '</style>', '')).toThrow(/must not contain/);
    expect(() => loadPlaygroundPage('/nonexistent-playground-dir')).toThrow(/npm run build:ts/);
  });
});
