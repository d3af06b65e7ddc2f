/** Create an element: h('button', {class: 'btn', onclick: f}, 'Save'). Text is never parsed as HTML. */
export function h(tag, props = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (value == null || value === false) continue;
    if (key.startsWith('on')) el.addEventListener(key.slice(2), value);
    else if (key === 'class') el.className = value;
    else if (key === 'dataset') Object.assign(el.dataset, value);
    else if (key in el && typeof value !== 'string') el[key] = value;
    else el.setAttribute(key, value === true ? '' : value);
  }
  el.append(...children.flat().filter((child) => child != null && child !== false));
  return el;
}

export const $ = (selector) => document.querySelector(selector);

/** The value of the CSS variable `name` ('--text') in the current theme (theme.js, app.css). */
export const cssVar = (name) => getComputedStyle(document.documentElement).getPropertyValue(name).trim();

const bannerMessages = [];

/** Show `message` in the page's #banner: the three most recent, until its close button is pressed. */
export function showBanner(message) {
  const banner = $('#banner');
  if (!banner.dataset.wired) {
    banner.dataset.wired = 'yes';
    $('#banner-close').addEventListener('click', () => {
      bannerMessages.length = 0;
      banner.hidden = true;
    });
  }
  if (!bannerMessages.includes(message)) bannerMessages.push(message);
  bannerMessages.splice(0, bannerMessages.length - 3);
  $('#banner-list').replaceChildren(...bannerMessages.map((text) => h('li', {}, text)));
  banner.hidden = false;
}

/** Buttons with data-copy="#selector" copy that input's or textarea's value when clicked. */
export function wireCopyButtons() {
  for (const button of document.querySelectorAll('[data-copy]')) {
    button.addEventListener('click', async () => {
      const input = $(button.dataset.copy);
      input.select();
      let copied = false;
      try {
        await navigator.clipboard.writeText(input.value);
        copied = true;
      } catch {
        copied = document.execCommand?.('copy') ?? false; // http:// pages have no clipboard API
      }
      button.textContent = copied ? 'Copied' : 'Press Ctrl+C';
      setTimeout(() => { button.textContent = 'Copy'; }, 2000);
    });
  }
}

/** A drop zone (click or Enter/Space opens `input`, a file picker) calling onFile(file). */
export function dropTarget(zone, input, onFile) {
  zone.addEventListener('keydown', (event) => {
    if (event.key === 'Enter' || event.key === ' ') { event.preventDefault(); input.click(); }
  });
  input.addEventListener('change', () => { if (input.files[0]) onFile(input.files[0]); input.value = ''; });
  zone.addEventListener('dragover', (event) => { event.preventDefault(); zone.classList.add('is-over'); });
  zone.addEventListener('dragleave', () => zone.classList.remove('is-over'));
  zone.addEventListener('drop', (event) => {
    event.preventDefault();
    zone.classList.remove('is-over');
    const file = event.dataTransfer?.files?.[0];
    if (file) onFile(file);
  });
}

/** Show `message` in an error element, or hide it when there is none. */
export function showError(el, message) {
  el.textContent = message ?? '';
  el.hidden = !message;
}
