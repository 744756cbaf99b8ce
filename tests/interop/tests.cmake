# The interop test needs llama.cpp's prebuilt x86-64 library (npm: node-llama-cpp, installed by
# scripts/install-deps.sh into tests/interop/node_modules). It is registered only on x86-64 Linux,
# the platform that package ships for; the configure step says so.
if(CMAKE_SYSTEM_PROCESSOR MATCHES "x86_64|AMD64")
  set_tests_properties(interop_test_llamacpp PROPERTIES LABELS "interop" TIMEOUT 600)
else()
  message(STATUS "moekit: interop test against llama.cpp not registered (needs x86-64)")
  set_tests_properties(interop_test_llamacpp PROPERTIES DISABLED TRUE)
endif()
if(CMAKE_SYSTEM_PROCESSOR MATCHES "x86_64|AMD64")
  set_tests_properties(interop_test_llama_quantize PROPERTIES LABELS "interop" TIMEOUT 600)
  target_link_libraries(interop_test_llama_quantize PRIVATE ${CMAKE_DL_LIBS})
else()
  set_tests_properties(interop_test_llama_quantize PROPERTIES DISABLED TRUE)
endif()
