// The ipywidgets HTML manager calls MathJax 2's MathJax.Hub.Queue(["Typeset", MathJax.Hub, element]) when it renders
// widget labels; the book loads MathJax 3, which has no Hub. Map that call onto MathJax 3's typesetPromise.
(function () {
  function install() {
    var mj = window.MathJax;
    if (!mj || mj.Hub) return;
    mj.Hub = {
      Queue: function (job) {
        if (Array.isArray(job) && job[0] === "Typeset" && mj.typesetPromise) {
          mj.typesetPromise(job[2] ? [job[2]] : undefined).catch(function () {});
        }
      },
    };
  }
  install();
  document.addEventListener("DOMContentLoaded", install);
  window.addEventListener("load", install);
})();
