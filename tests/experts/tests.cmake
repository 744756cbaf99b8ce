# tests/experts: every case also joins the sanitizer pass (they parse JSON reports, Prometheus
# text and GGUF files, and drive the CLI). Included by tests/CMakeLists.txt with `srcs` set.
foreach(src ${srcs})
  get_filename_component(name ${src} NAME_WE)
  set_tests_properties(experts_${name} PROPERTIES LABELS "experts;asan")
endforeach()
