// release: example-1
document.documentElement.dataset.release =
  document.querySelector('meta[name="release"]').content;
