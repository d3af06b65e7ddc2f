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
