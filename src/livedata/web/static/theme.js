// The colour theme, before the page is drawn (a classic script in every page's <head>):
// light or dark as the OS prefers (prefers-color-scheme), unless the user chose one with
// the top bar's toggle (session.js), which this browser remembers (localStorage).
// <html data-theme> selects the CSS variables of app.css; a change is announced with a
// 'livedata:theme' event on window, so charts can recolour themselves.
(() => {
  const KEY = 'livedata.theme';
  const query = matchMedia('(prefers-color-scheme: dark)');
  const chosen = () => {
    const stored = localStorage.getItem(KEY);
    return stored === 'dark' || stored === 'light' ? stored : null;
  };
  const apply = (theme) => {
    if (document.documentElement.dataset.theme === theme) return;
    document.documentElement.dataset.theme = theme;
    dispatchEvent(new CustomEvent('livedata:theme', { detail: theme }));
  };
  apply(chosen() ?? (query.matches ? 'dark' : 'light'));
  query.addEventListener('change', () => {
    if (!chosen()) apply(query.matches ? 'dark' : 'light');
  });
  window.livedataTheme = {
    get: () => document.documentElement.dataset.theme,
    /** Choose `theme` ('light' | 'dark') and remember it. */
    set(theme) {
      localStorage.setItem(KEY, theme);
      apply(theme);
    },
  };
})();
