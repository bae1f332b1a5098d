/*
 * CAM Explorer's one browser-side operator: open_url, which opens a URL in a new tab.
 * FiftyOne 1.22's App has no built-in operator for that, and a Python operator cannot reach the
 * browser's window, so `open_in_cam_explorer` triggers this one with ctx.trigger(...).
 * Hand-written (no build step): it uses the App's globals, as compiled plugins do.
 */
(function () {
  "use strict";
  var fop = window.__foo__; // @fiftyone/operators, exposed by the App for plugins
  if (!fop || !fop.Operator || !fop.registerOperator) {
    console.error("@cam-explorer/cam: the App exposes no operators API; open_url is unavailable");
    return;
  }

  class OpenUrl extends fop.Operator {
    get config() {
      return new fop.OperatorConfig({ name: "open_url", label: "Open a URL in a new tab", unlisted: true });
    }

    async execute(ctx) {
      var url = String((ctx.params && ctx.params.url) || "");
      // Only web pages: never javascript: or file: URLs handed over by a server response.
      if (!/^https?:\/\//i.test(url)) {
        throw new Error("open_url: not an http(s) URL: " + url);
      }
      var opened = window.open(url, "_blank", "noopener");
      if (!opened) {
        // A popup blocker, or noopener (which returns null by design): nothing more to do here;
        // the Python operator's output shows the same URL as a link.
        console.info("@cam-explorer/cam: asked the browser to open " + url);
      }
    }
  }

  fop.registerOperator(OpenUrl, "@cam-explorer/cam");
})();
