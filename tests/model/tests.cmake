# The reference vectors again with every kernel forced to its scalar _ref form (issue 4's
# acceptance: all model vectors pass with the fast paths on, and with MOE_FORCE_REF=1).
add_test(NAME model_test_vectors_ref COMMAND model_test_vectors WORKING_DIRECTORY ${CMAKE_BINARY_DIR})
set_tests_properties(model_test_vectors_ref PROPERTIES LABELS "model" ENVIRONMENT "${MOE_TEST_ENV};MOE_FORCE_REF=1"
                     TIMEOUT 900)
# The model vectors on the AVX2 forms (MOE_SIMD=avx2, as on CPUs without AVX-512 VNNI; the
# weights copied into huge pages in the file's layout instead of repacked).
add_test(NAME model_test_vectors_avx2 COMMAND model_test_vectors WORKING_DIRECTORY ${CMAKE_BINARY_DIR})
set_tests_properties(model_test_vectors_avx2 PROPERTIES LABELS "model" ENVIRONMENT "${MOE_TEST_ENV};MOE_SIMD=avx2"
                     TIMEOUT 900)
